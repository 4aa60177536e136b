#!/usr/bin/env python3
"""Which int8 form to use on CPU: the speed of each against float32, on the same model, inputs and machine.

Forms: float32; PyTorch's dynamic int8 (`torch.ao.quantization.quantize_dynamic` on every `nn.Linear`, deprecated
since torch 2.10); torchao's int8 weight-only (`Int8WeightOnlyConfig`) and dynamic int8 activations with int8 weights
(`Int8DynamicActivationInt8WeightConfig`), through `torchao.quantization.quantize_`. One model (bart-base size with
random weights, as in `generate_benchmark.py`), quantised in turn; each round times every form once, in turn, so
that a busy machine slows them alike; medians over the rounds. Timed: the encoder on one input (what classification
and the start of summarisation pay) and a decoding step of `generate` (beam search, new tokens forced: the rest of
summarisation), as (generate - encoder) / new tokens. Also reported: the encoder output's relative L2 error against
float32 (random weights say nothing about the agreement of generated tokens: see `int8_agreement.py`).

  pip install torchao                                       # not in the dev extra (docs/versions.md)
  python benchmarks/int8_forms.py                          # 1,024 tokens, 4 beams, 32 new tokens, 3 rounds
  python benchmarks/int8_forms.py --size tiny --rounds 1   # a smoke test
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from core import copy_bandwidth_gb_s, cpu_description, measure_matmul  # noqa: E402
from generate_benchmark import SIZES, build_model, dynamic_int8  # noqa: E402

DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "results" / "int8_forms"


def quantized(model, form: str):
    """A copy of `model` in int8 `form` (or the model itself for "float32")."""
    if form == "float32":
        return model
    model = copy.deepcopy(model)
    if form == "torch.ao dynamic":
        return dynamic_int8(model)
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

    config = {"torchao weight-only": Int8WeightOnlyConfig, "torchao dynamic": Int8DynamicActivationInt8WeightConfig}
    quantize_(model, config[form]())
    return model


FORMS = ("float32", "torch.ao dynamic", "torchao weight-only", "torchao dynamic")


def machine_rates(threads: int) -> dict:
    """This machine's float32 matmul rate (GFLOP/s, a bart-base feed-forward product of 1,024 tokens), copy
    bandwidth (GB/s) and load average, at this moment: measured before and after the timings, they show how busy
    the machine was."""
    import os

    matmul = measure_matmul({"threads": threads, "shapes": [(1024, 768, 3072)], "repeats": 5})
    return {"fp32_gflops": round(matmul["float32"]["best"], 1), "copy_gb_s": round(copy_bandwidth_gb_s(), 1),
            "load_average": round(os.getloadavg()[0], 2)}


def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


NUMBER_OPTIONS = (("length", 1024, "input tokens"), ("beams", 4, "beams"), ("new-tokens", 32, "forced new tokens"),
                  ("rounds", 3, "timed rounds"), ("threads", 2, "torch threads"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="base", help="model size (default: base)")
    for name, default, meaning in NUMBER_OPTIONS:
        parser.add_argument(f"--{name}", type=int, default=default, help=f"{meaning} (default: {default})")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help=f"default {DEFAULT_OUT_DIR}")
    args = parser.parse_args(argv)
    for name, _, _ in NUMBER_OPTIONS:
        if getattr(args, name.replace("-", "_")) < 1:
            parser.error(f"--{name} must be a positive integer")
    if importlib.util.find_spec("torchao") is None:
        parser.error("torchao is not installed (the dev extra leaves it out): pip install torchao")
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = SIZES[args.size]
    model = build_model("lsg", size, args.length).eval()
    models = {form: quantized(model, form).eval() for form in FORMS}
    input_ids = torch.randint(4, size["vocab_size"], (1, args.length), generator=torch.Generator().manual_seed(0))
    settings = dict(num_beams=args.beams, min_new_tokens=args.new_tokens, max_new_tokens=args.new_tokens,
                    do_sample=False, early_stopping=False)
    rates = {"before": machine_rates(args.threads)}
    encoder_s = {form: [] for form in FORMS}
    generate_s = {form: [] for form in FORMS}
    with torch.inference_mode():
        encoded = {form: m.get_encoder()(input_ids=input_ids).last_hidden_state for form, m in models.items()}
        for m in models.values():  # warm-up
            m.generate(input_ids=input_ids[:, :256], **{**settings, "min_new_tokens": 2, "max_new_tokens": 2})
        for _ in range(args.rounds):
            for form, m in models.items():
                encoder_s[form].append(timed(lambda: m.get_encoder()(input_ids=input_ids))[0])
                generate_s[form].append(timed(lambda: m.generate(input_ids=input_ids, **settings))[0])
    rates["after"] = machine_rates(args.threads)
    rows = []
    for form in FORMS:
        encoder, generate = statistics.median(encoder_s[form]), statistics.median(generate_s[form])
        error = (encoded[form] - encoded["float32"]).norm() / encoded["float32"].norm()
        rows.append(dict(form=form, encoder_s=encoder, generate_s=generate,
                         step_s=(generate - encoder) / args.new_tokens, encoder_rel_l2=error.item(),
                         encoder_runs=encoder_s[form], generate_runs=generate_s[form]))
    results = dict(date=datetime.datetime.now().isoformat(timespec="seconds"), command="python " + " ".join(sys.argv),
                   machine=cpu_description(), torch=torch.__version__, torchao=torchao_version(), size=args.size,
                   length=args.length, beams=args.beams, new_tokens=args.new_tokens, rounds=args.rounds,
                   threads=args.threads, rates=rates, rows=rows)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results.json").write_text(json.dumps(results, indent=1))
    (args.out_dir / "results.md").write_text(markdown(results))
    print(markdown(results))
    return 0


def torchao_version():
    from importlib.metadata import version

    return version("torchao")


def machine_rates_text(rates) -> str:
    units = (("float32 matmul", "fp32_gflops", " GFLOP/s"), ("copy", "copy_gb_s", " GB/s"),
             ("load average", "load_average", ""))
    return ", ".join(f"{label} {rates['before'][key]} / {rates['after'][key]}{unit}" for label, key, unit in units)


def markdown(results) -> str:
    base = results["rows"][0]
    lines = [f"# int8 forms on CPU, {results['machine']}, {results['threads']} threads, {results['date']}", "",
             f"Command: `{results['command']}` (torch {results['torch']}, torchao {results['torchao']}; "
             f"{results['size']} size, {results['length']} tokens, {results['beams']} beams, "
             f"{results['new_tokens']} new tokens; medians of {results['rounds']} rounds)", "",
             f"Machine rates, before / after the timings: {machine_rates_text(results['rates'])}.", "",
             "| form | encoder s | vs float32 | s per decoding step | vs float32 | encoder rel. L2 vs float32 |",
             "|---|---|---|---|---|---|"]
    for row in results["rows"]:
        cells = [row["form"], f"{row['encoder_s']:.3f}", f"{base['encoder_s'] / row['encoder_s']:.2f}x",
                 f"{row['step_s']:.4f}", f"{base['step_s'] / row['step_s']:.2f}x", f"{row['encoder_rel_l2']:.2e}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
