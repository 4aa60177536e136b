#!/usr/bin/env python
"""Convert a BART checkpoint to LSG-BART (same as `lsg-bart-convert`; see `python convert_checkpoint.py --help`)."""

import sys

from lsg_bart.convert import main

if __name__ == "__main__":
    sys.exit(main())
