#!/usr/bin/env bash
# The figures in the README: three runs of run_benchmark.py (about 25 minutes on 2 cores), each into its own folder.
#   benchmarks/results/infer: main setting, bf16 and the peers at 1k-16k tokens, inference
#   benchmarks/results/types: every sparsity type, the reference path and full eager attention at 4k tokens
#   benchmarks/results/train: one training step at 4k tokens (and LSG at 16k)
set -euo pipefail
cd "$(dirname "$0")/.."
original=benchmarks/anchors_original.json
python benchmarks/run_benchmark.py --modes infer --lengths 1024,4096,8192,16384 \
    --impls lsg_norm,lsg_bf16,bart_sdpa,led_w256,led_w1024,bigbird \
    --original "$original" --out-dir benchmarks/results/infer
python benchmarks/run_benchmark.py --modes infer --lengths 4096 \
    --impls lsg_none,lsg_norm,lsg_pooling,lsg_lsh,lsg_stride,lsg_block_stride,lsg_bos_pooling,lsg_norm_b64,lsg_eager,bart_eager \
    --original "$original" --out-dir benchmarks/results/types
python benchmarks/run_benchmark.py --modes train --lengths 4096 \
    --impls lsg_norm,lsg_bf16,bart_sdpa,led_w256,led_w1024,bigbird \
    --original "$original" --out-dir benchmarks/results/train
python benchmarks/run_benchmark.py --modes train --lengths 16384 --impls lsg_norm \
    --original "$original" --out-dir benchmarks/results/train16k
