#!/usr/bin/env python3
"""The GPU check: LSG-BART on CUDA, correct and timed, in one command (`benchmarks/gpu_check.sh`).

1. Parity: every golden case of `tests/fixtures/parity` (the original's outputs) loaded as remote code and run on
   the device with each CUDA kernel (`sdpa`, the default, and `flex`) in float32 (max abs error, must be < 1e-4)
   and under bfloat16 autocast (error reported).
2. Timing: encoder forward (inference) and one training step (forward + backward) at bart-base size, random
   weights, batch 1, for lsg with each kernel (lsg_sdpa, lsg_flex), LED (window 1024) and full-attention BART
   (SDPA), at each length; median of a few runs after a warm-up, peak CUDA memory. These are the figures that
   decide whether "auto" should pick `flex` on CUDA.

Writes one JSON file. `--dry-run` runs the same code on the CPU with a tiny model and short inputs (CI does this,
so that the script keeps working on machines without a GPU).

  bash benchmarks/gpu_check.sh                       # on a machine with a CUDA GPU
  bash benchmarks/gpu_check.sh --dry-run             # anywhere, in about a minute
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARITY = REPO / "tests" / "fixtures" / "parity"
SIZES = {
    "base": dict(d_model=768, encoder_attention_heads=12, encoder_ffn_dim=3072, encoder_layers=6, vocab_size=50265),
    "tiny": dict(d_model=64, encoder_attention_heads=4, encoder_ffn_dim=128, encoder_layers=2, vocab_size=1000),
}


KERNELS = ("sdpa", "flex")


def parity(device, dtype_name, kernel):
    """Max abs error of the encoder output and logits against the golden outputs, per case, with `kernel`."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForSeq2SeqLM

    from lsg_bart import REMOTE_CODE_FILES

    results = {}
    with tempfile.TemporaryDirectory(prefix="lsg-gpu-check-") as tmp:
        for case in sorted(p.name for p in PARITY.iterdir() if (p / "expected.safetensors").exists()):
            folder = Path(tmp) / case
            shutil.copytree(PARITY / case, folder)
            for name in REMOTE_CODE_FILES:
                shutil.copy(REPO / "lsg_bart" / name, folder / name)
            model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True, lsg_kernel=kernel)
            model = model.to(device).eval()
            inputs = {k: v.to(device) for k, v in load_file(folder / "inputs.safetensors").items()}
            expected = load_file(folder / "expected.safetensors")
            autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype_name == "bf16")
            with torch.no_grad(), autocast:
                outputs = model(**inputs)
            results[case] = {
                "encoder_max_abs_err": (outputs.encoder_last_hidden_state.float().cpu()
                                        - expected["encoder_last_hidden_state"]).abs().max().item(),
                "logits_max_abs_err": (outputs.logits.float().cpu() - expected["logits"]).abs().max().item(),
            }
    return results


def build_encoder(impl, size, length):
    from transformers import BartConfig, LEDConfig
    from transformers.models.bart.modeling_bart import BartEncoder
    from transformers.models.led.modeling_led import LEDEncoder

    from lsg_bart import LSGBartConfig
    from lsg_bart.modeling_lsg_bart import LSGBartEncoder

    common = dict(**SIZES[size], decoder_layers=1, dropout=0.1, attention_dropout=0.0)
    if impl.startswith("lsg_"):
        return LSGBartEncoder(LSGBartConfig(max_position_embeddings=-(-length // 128) * 128, block_size=128,
                                            sparse_block_size=128, sparsity_factor=2, lsg_kernel=impl[4:], **common))
    if impl == "led":
        return LEDEncoder(LEDConfig(max_encoder_position_embeddings=-(-length // 1024) * 1024,
                                    attention_window=1024, **common))
    return BartEncoder(BartConfig(max_position_embeddings=length, **common))


def time_encoder(impl, size, length, mode, device, repeats):
    """Median seconds and peak memory of an encoder forward (infer) or forward + backward (train)."""
    import torch

    torch.manual_seed(0)
    encoder = build_encoder(impl, size, length).to(device).train(mode == "train")
    input_ids = torch.randint(4, SIZES[size]["vocab_size"], (1, length), device=device)
    kwargs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if impl == "led":
        kwargs["global_attention_mask"] = torch.zeros_like(input_ids)
        kwargs["global_attention_mask"][:, 0] = 1

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            if mode == "train":
                encoder(**kwargs).last_hidden_state.float().mean().backward()
                encoder.zero_grad(set_to_none=True)
            else:
                with torch.no_grad():
                    encoder(**kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: kernels compiled and chosen
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return {"median_s": statistics.median(times), "times_s": times, "peak_mb": peak}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model, 512 tokens: check the script")
    parser.add_argument("--lengths", default="4096,16384", help="comma-separated input lengths (default 4096,16384)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting after a warm-up (default 3)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpu_check.json",
                        help="JSON file to write (default benchmarks/results/gpu_check.json)")
    args = parser.parse_args(argv)
    import torch

    if args.dry_run:
        device, size, lengths = torch.device("cpu"), "tiny", [512]
    elif not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; run it on a machine with a GPU, or use --dry-run")
    else:
        device, size = torch.device("cuda"), "base"
        lengths = [int(part) for part in args.lengths.split(",")]
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (dry run)",
              "torch": torch.__version__, "size": size, "parity": {}, "timing": []}
    for kernel in KERNELS:
        for dtype_name in ("fp32", "bf16"):
            report["parity"][f"{kernel}_{dtype_name}"] = parity(device, dtype_name, kernel)
    worst = max(r["logits_max_abs_err"] for k in KERNELS for r in report["parity"][f"{k}_fp32"].values())
    report["parity_fp32_ok"] = worst < 1e-4
    for length in lengths:
        for mode in ("infer", "train"):
            for impl in ("lsg_sdpa", "lsg_flex", "led", "bart"):
                if impl == "lsg_flex" and mode == "train" and device.type == "cpu":
                    continue  # FlexAttention has no backward pass on CPU
                try:
                    result = time_encoder(impl, size, length, mode, device, args.repeats)
                    report["timing"].append({"impl": impl, "length": length, "mode": mode, "status": "ok", **result})
                except torch.OutOfMemoryError:
                    report["timing"].append({"impl": impl, "length": length, "mode": mode, "status": "out of memory"})
                    torch.cuda.empty_cache()
                print(json.dumps(report["timing"][-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"parity fp32 worst logits error {worst:.2e} ({'ok' if report['parity_fp32_ok'] else 'FAILED'}); "
          f"wrote {args.out}")
    return 0 if report["parity_fp32_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
