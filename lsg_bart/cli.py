"""What the command lines of the package and of `examples/` share: one-line errors and the `--model_kwargs` JSON.

Standard library only, so that `--help` and argument errors answer before torch and transformers are imported.
"""

import argparse
import json


def one_line(text):
    """`text` with its lines joined by spaces (messages from transformers and huggingface_hub span several)."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


class OneLineErrors:
    """Mix into an `argparse.ArgumentParser` (or transformers' `HfArgumentParser`): errors are one line,
    `PROG: error: MESSAGE`, with exit status 2 (the usage is for --help)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


class OneLineErrorParser(OneLineErrors, argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose errors are one line."""


def json_object(text, flag="--model_kwargs"):
    """`text` (JSON) as a dict, {} when empty; `ValueError` naming `flag` unless it is a JSON object."""
    try:
        value = json.loads(text) if text and text.strip() else {}
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{flag} is not valid JSON ({error}): {text!r}; expected an object such as "
            '\'{"block_size": 128, "sparsity_type": "norm"}\''
        ) from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object (a dict of config fields), got {text!r}")
    return value
