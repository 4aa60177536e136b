#!/usr/bin/env bash
# LSG-BART on a CUDA GPU in one command: parity fixtures in fp32 and bf16, then encoder forward and a training
# step at 4,096 and 16,384 tokens against LED and full attention, into benchmarks/results/gpu_check.json.
#   bash benchmarks/gpu_check.sh            # needs a GPU (and this project installed: pip install -e .)
#   bash benchmarks/gpu_check.sh --dry-run  # the same on the CPU with a tiny model (what CI runs)
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/gpu_check.py "$@"
