#!/usr/bin/env bash
# The figures in the README: four runs of run_benchmark.py (about 30 minutes on 2 cores), each into its own folder.
#   benchmarks/results/infer: main setting, bf16 and the peers at 1k-16k tokens, inference
#   benchmarks/results/types: every sparsity type, the reference path and full eager attention at 4k tokens
#   benchmarks/results/train: one training step at 4k tokens
#   benchmarks/results/train16k: one training step of LSG at 16k tokens
# With ORIGINAL_PYTHON set to an interpreter that has lsg-converter 0.1.9 and transformers 4.38, the original
# LSG-BART is measured in the same runs; without it, its figures are read from benchmarks/anchors_original.json.
#   python -m venv /tmp/orig && /tmp/orig/bin/pip install torch transformers==4.38.2 lsg-converter==0.1.9
#   ORIGINAL_PYTHON=/tmp/orig/bin/python bash benchmarks/readme_grid.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${ORIGINAL_PYTHON:-}" ]]; then
    original=(--original-python "$ORIGINAL_PYTHON")
    with_original=lsg_original,
else
    original=(--original benchmarks/anchors_original.json)
    with_original=
fi
python benchmarks/run_benchmark.py --modes infer --lengths 1024,4096,8192,16384 \
    --impls "${with_original}lsg_norm,lsg_bf16,bart_sdpa,led_w256,led_w1024,bigbird" \
    "${original[@]}" --out-dir benchmarks/results/infer
python benchmarks/run_benchmark.py --modes infer --lengths 4096 \
    --impls "${with_original}lsg_none,lsg_norm,lsg_pooling,lsg_lsh,lsg_stride,lsg_block_stride,lsg_bos_pooling,lsg_norm_b64,lsg_eager,bart_eager" \
    "${original[@]}" --out-dir benchmarks/results/types
python benchmarks/run_benchmark.py --modes train --lengths 4096 \
    --impls "${with_original}lsg_norm,lsg_bf16,bart_sdpa,led_w256,led_w1024,bigbird" \
    "${original[@]}" --out-dir benchmarks/results/train
python benchmarks/run_benchmark.py --modes train --lengths 16384 --impls "${with_original}lsg_norm" \
    "${original[@]}" --out-dir benchmarks/results/train16k
