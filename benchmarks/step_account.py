#!/usr/bin/env python3
"""A decoding step's account: where the time of one `generate` step goes, part by part, against the bytes each part
must read and this machine's copy bandwidth, measured in the same run.

One `generate` call (bart-base size, random weights, a long input, beams, a forced number of new tokens) runs with
timing hooks on the decoder's modules. Each step is split into:
- self-attention: the decoder's self-attention layers (projections, the cache update, attention over the cache);
- cross-attention: the query and output projections and the attention over the encoder's keys and values (those
  are projected once per input before decoding, so they are read, not computed, at each step);
- feed-forward: the decoder's fc1 and fc2 products, their activation and residual (what runs between the
  cross-attention's layer norm and the final one);
- rest of the decoder: embeddings, layer norms, the attentions' residuals, masks;
- LM head: the vocabulary projection and its bias (the model's forward pass outside the decoder);
- generate: everything `generate` does per step outside the model's forward pass (beam search, logits processing,
  cache reordering, stopping criteria), and its set-up shared out over the steps.
The cross-attention keys and values, projected once per input when `generate` starts, are timed apart and left out
of the steps.

Bytes are what a part must read at least once per step: weights (int8 counts one byte a weight), the cross-attention
keys and values of each input, the self-attention cache at the run's mean length, the scores `generate` reads. The
floor of a part is its bytes over the copy bandwidth (bytes read and written per second by a large tensor copy).

  python benchmarks/step_account.py                         # float32 and int8, 4,096 tokens, 4 beams, 64 steps
  python benchmarks/step_account.py --quick                 # tiny model, seconds
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from core import copy_bandwidth_gb_s, limits_sentence, machine_limits, run_in_subprocess, worker_main  # noqa: E402
from core import write_results  # noqa: E402
from generate_benchmark import SIZES, build_model, dynamic_int8  # noqa: E402

DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "results" / "step_account"
PRECISIONS = ("fp32", "int8", "bf16")
PARTS = ("self-attention", "cross-attention", "feed-forward", "rest of the decoder", "LM head", "generate")


def tensor_bytes(tensor) -> int:
    return tensor.numel() * tensor.element_size()


def linear_bytes(module) -> int:
    """Bytes of a linear layer's weight and bias, whatever its form: `nn.Linear`, or torch.ao's dynamic int8
    linear, whose `weight()` and `bias()` are methods over its packed parameters."""
    weight, bias = module.weight, module.bias
    weight = weight() if callable(weight) else weight
    bias = bias() if callable(bias) else bias
    return tensor_bytes(weight) + (tensor_bytes(bias) if bias is not None else 0)


def part_bytes(model, length: int, batch: int, beams: int, steps: int) -> dict:
    """What each part must read per step (see the module docstring)."""
    config = model.config
    item = model.model.shared.weight.element_size()  # activations and caches: the model's float dtype
    layers = model.model.decoder.layers
    rows = batch * beams
    mean_cached = (steps + 1) / 2
    encoder_positions = length + config.num_global_tokens
    self_attention = sum(linear_bytes(getattr(layer.self_attn, name)) for layer in layers
                         for name in ("q_proj", "k_proj", "v_proj", "out_proj"))  # fmt: skip
    self_attention += len(layers) * 2 * rows * mean_cached * config.d_model * item
    cross_attention = sum(linear_bytes(getattr(layer.encoder_attn, name)) for layer in layers
                          for name in ("q_proj", "out_proj"))  # fmt: skip
    cross_attention += len(layers) * 2 * batch * encoder_positions * config.d_model * item
    feed_forward = sum(linear_bytes(layer.fc1) + linear_bytes(layer.fc2) for layer in layers)
    norms = sum(tensor_bytes(p) for layer in layers for norm in (layer.self_attn_layer_norm,
                layer.encoder_attn_layer_norm, layer.final_layer_norm) for p in norm.parameters())  # fmt: skip
    lm_head = linear_bytes(model.lm_head) + tensor_bytes(model.final_logits_bias)
    scores = rows * config.vocab_size * 4  # float32 scores, read by the beam search
    return {
        "self-attention": self_attention, "cross-attention": cross_attention, "feed-forward": feed_forward,
        "rest of the decoder": norms, "LM head": lm_head, "generate": scores,
    }  # fmt: skip


class PartTimer:
    """Wall time spent inside modules, per part, from forward pre- and post-hooks (the CPU runs synchronously)."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        self.started = {}

    def watch(self, module, part):
        """Time `module`'s forward pass as `part`."""
        self.watch_between(module, module, part, from_start=True)

    def watch_between(self, first, last, part, from_start=False):
        """Time `part` from the end of `first`'s forward pass to the start of `last`'s: what runs between two modules,
        such as products computed from a layer's weights without calling it (a hook on that layer would change how
        the model calls it). With `from_start`, from the start of `first`'s pass to the end of `last`'s."""
        key = (id(first), id(last))

        def start(*_):
            self.started[key] = time.perf_counter()

        def stop(*_):
            self.seconds[part] += time.perf_counter() - self.started.pop(key)
            self.calls[part] += 1

        if from_start:
            first.register_forward_pre_hook(start)
            last.register_forward_hook(stop)
        else:
            first.register_forward_hook(start)
            last.register_forward_pre_hook(stop)


def quantize(model, precision: str):
    import torch

    if precision == "bf16":
        return model.to(torch.bfloat16)
    if precision == "int8":
        return dynamic_int8(model)
    return model


def measure(task: dict) -> dict:
    """One generate call with the parts timed; returns ms per step and bytes per part."""
    import torch

    torch.set_num_threads(task["threads"])
    size, length, batch, beams, steps = SIZES[task["size"]], task["length"], task["batch"], task["beams"], task["steps"]
    torch.manual_seed(0)
    model = quantize(build_model("lsg", size, length).eval(), task["precision"])
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(4, size["vocab_size"], (batch, length), generator=generator)
    settings = dict(num_beams=beams, do_sample=False, length_penalty=1.0, no_repeat_ngram_size=0,
                    early_stopping=False, use_cache=True)  # fmt: skip
    with torch.inference_mode():
        encoder_outputs = model.get_encoder()(input_ids=input_ids)
        model.generate(encoder_outputs=encoder_outputs, min_new_tokens=2, max_new_tokens=2, **settings)  # warm-up
        start = time.perf_counter()
        encoder_outputs = model.get_encoder()(input_ids=input_ids)
        encoder_s = time.perf_counter() - start

    timer = PartTimer()
    decoder = model.model.decoder
    for layer in decoder.layers:
        timer.watch(layer.self_attn, "self-attention")
        timer.watch(layer.encoder_attn, "cross-attention")
        timer.watch_between(layer.encoder_attn_layer_norm, layer.final_layer_norm, "feed-forward")
    timer.watch(decoder, "decoder")
    timer.watch(model, "model")
    # The cross-attention keys and values are projected once per input when `generate` starts: input work, kept
    # out of the steps.
    projecting = model.model.set_encoder_output_for_decoding

    def timed_projection(encoder_output):
        start = time.perf_counter()
        projecting(encoder_output)
        timer.seconds["keys and values"] += time.perf_counter() - start

    model.model.set_encoder_output_for_decoding = timed_projection
    with torch.inference_mode():
        start = time.perf_counter()
        output = model.generate(encoder_outputs=encoder_outputs, min_new_tokens=steps, max_new_tokens=steps, **settings)
        total = time.perf_counter() - timer.seconds["keys and values"] - start
    forward_calls = timer.calls["model"]
    per_step = {part: seconds / forward_calls for part, seconds in timer.seconds.items()}
    inside = sum(per_step[part] for part in ("self-attention", "cross-attention", "feed-forward"))
    account = {
        "self-attention": per_step["self-attention"],
        "cross-attention": per_step["cross-attention"],
        "feed-forward": per_step["feed-forward"],
        "rest of the decoder": per_step["decoder"] - inside,
        "LM head": per_step["model"] - per_step["decoder"],
        "generate": (total - timer.seconds["model"]) / forward_calls,
    }
    bandwidth = copy_bandwidth_gb_s()
    bytes_read = part_bytes(model, length, batch, beams, steps)
    return dict(
        step_s=total / forward_calls, steps=forward_calls, generated=output.shape[1] - 1, bandwidth_gb_s=bandwidth,
        keys_and_values_s=timer.seconds["keys and values"], encoder_s=encoder_s,
        parts=[dict(part=part, seconds=account[part], bytes=bytes_read[part],
                    floor_s=bytes_read[part] / (bandwidth * 1e9)) for part in PARTS],
    )  # fmt: skip


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [
        f"# A decoding step's account ({meta['date']})",
        "",
        f"`{meta['command']}`, torch {meta['torch']}: {limits_sentence(meta['limits'])} (and in each table, "
        f"measured beside its own timing). Size "
        f"{meta['size']}, {meta['length']:,} input tokens, batch {meta['batch']}, {meta['beams']} beams, "
        f"{meta['steps']} forced steps.",
        "",
    ]
    for row in results["rows"]:
        total_bytes = sum(part["bytes"] for part in row["parts"])
        floor = total_bytes / (row["bandwidth_gb_s"] * 1e9)
        lines += [
            f"## {row['precision']}: {row['step_s'] * 1e3:.1f} ms a step, floor {floor * 1e3:.1f} ms "
            f"({total_bytes / 1e6:.0f} MB at a copy bandwidth of {row['bandwidth_gb_s']:.1f} GB/s): "
            f"{row['step_s'] / floor:.1f}x the floor",
            "",
            f"Before the first step, once per input: the encoder, {row['encoder_s'] * 1e3:.0f} ms (timed apart, "
            f"after a warm-up), and the cross-attention keys and values, {row['keys_and_values_s'] * 1e3:.0f} ms.",
            "",
            "| part | ms a step | share | MB read | floor ms | time / floor |",
            "|---|---|---|---|---|---|",
        ]
        for part in row["parts"]:
            lines.append(
                f"| {part['part']} | {part['seconds'] * 1e3:.2f} | {part['seconds'] / row['step_s']:.0%} | "
                f"{part['bytes'] / 1e6:.1f} | {part['floor_s'] * 1e3:.2f} | "
                f"{part['seconds'] / part['floor_s']:.1f}x |"
            )
        lines.append("")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Time one decoding step of LSG-BART part by part, against the bytes each part reads.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--precisions", default="fp32,int8", help=f"comma-separated, of {', '.join(PRECISIONS)}")
    parser.add_argument("--size", default="base", choices=sorted(SIZES), help="model size (random weights)")
    parser.add_argument("--length", type=int, default=4096, help="input tokens")
    parser.add_argument("--batch", type=int, default=1, help="inputs")
    parser.add_argument("--beams", type=int, default=4, help="beams per input")
    parser.add_argument("--steps", type=int, default=64, help="decoding steps, forced")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="where the JSON and markdown go")
    parser.add_argument("--quick", action="store_true", help="tiny model, 512 tokens, 8 steps: a smoke test")
    args = parser.parse_args(argv)
    args.precisions = [p for p in args.precisions.split(",") if p]
    unknown = [p for p in args.precisions if p not in PRECISIONS]
    if unknown or not args.precisions:
        given = ",".join(unknown) or repr("")
        parser.error(f"--precisions {given}: expected some of {', '.join(PRECISIONS)}")
    if args.quick:
        args.size, args.length, args.steps = "tiny", 512, 8
    return args


def main(argv=None) -> int:
    import torch

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker_main(argv[1], measure)
        return 0
    args = parse_args(argv)
    rows = []
    for precision in args.precisions:
        task = dict(precision=precision, size=args.size, length=args.length, batch=args.batch, beams=args.beams,
                    steps=args.steps, threads=args.threads)  # fmt: skip
        row = run_in_subprocess(task, timeout=3600, script=__file__)
        if row["status"] != "ok":
            print(f"{precision}: {row['note']}", file=sys.stderr)
            return 1
        rows.append(dict(precision=precision, **row))
        print(f"{precision}: {row['step_s'] * 1e3:.1f} ms a step", flush=True)
    limits = machine_limits(args.threads, quick=args.quick)
    meta = dict(
        limits=limits, date=datetime.date.today().isoformat(), platform=platform.platform(), torch=torch.__version__,
        threads=args.threads, size=args.size, length=args.length, batch=args.batch, beams=args.beams,
        steps=args.steps, command=" ".join(["python benchmarks/step_account.py", *argv]),
    )  # fmt: skip
    results = dict(meta=meta, rows=rows)
    write_results(args.out_dir, "step_account", results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
