#!/usr/bin/env python3
"""End-to-end summarisation speed: the encoder and `generate` on long inputs, as users run them.

Each setting (implementation, input length, beams, new tokens, batch) runs once in a fresh subprocess, at
bart-base size with random weights, with the number of new tokens forced (`min_new_tokens = max_new_tokens`):
- lsg, lsg_bf16: this project's LSGBartForConditionalGeneration (float32, bfloat16);
- lsg_int8: the same after PyTorch's dynamic int8 quantisation of every `nn.Linear`
  (`torch.ao.quantization.quantize_dynamic`, the int8 form that docs/performance.md recommends on CPU);
- lsg_compiled: float32 with transformers' compiled-decoding recipe (`cache_implementation="static"` and the
  model's forward under `torch.compile(fullgraph=True)`); its warm-up is a whole run of the same setting, so that
  compilation is not timed;
- original: the original LSG-BART (lsg-converter 0.1.9 on transformers 4.38), in the interpreter given with
  `--original-python`, measured in the same run;
- led: LEDForConditionalGeneration shaped like led-base (attention window 1024), global attention on token 0;
- bart: full-attention BART (SDPA), at lengths up to 4,096.

Reported per setting: seconds (encoder + generate), the encoder's share, seconds per decoding step, generated
tokens/s, peak memory growth over the built model, and for lsg the step's memory-bandwidth floor: the bytes a
decoding step must read (decoder weights, LM head, cross-attention keys and values, self-attention cache) over
this machine's measured copy bandwidth. Writes JSON, markdown and a plot to --out-dir.

  python benchmarks/generate_benchmark.py --quick                            # smoke test, < 1 min
  python benchmarks/generate_benchmark.py --original-python orig/bin/python  # the README grid (see --help)
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from core import copy_bandwidth_gb_s, limits_sentence, machine_limits, read_memory_mb  # noqa: E402
from core import reset_peak_memory, round_up, run_in_subprocess, worker_main  # noqa: E402
from run_benchmark import check_original_python  # noqa: E402

DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "results" / "generate"
IMPLS = ("lsg", "lsg_bf16", "lsg_int8", "lsg_compiled", "original", "led", "bart")
LSG_IMPLS = ("lsg", "lsg_bf16", "lsg_int8", "lsg_compiled")
SIZES = {
    "base": {"d_model": 768, "heads": 12, "ffn": 3072, "layers": 6, "vocab_size": 50265},
    "tiny": {"d_model": 64, "heads": 4, "ffn": 256, "layers": 2, "vocab_size": 1000},
}
LSG = {"block_size": 128, "sparse_block_size": 128, "sparsity_factor": 2, "num_global_tokens": 1}
LED_WINDOW = 1024
BART_MAX_LENGTH = 4096


# ---------------------------------------------------------------------------------------------------------------
# Worker side (a fresh subprocess per setting)
# ---------------------------------------------------------------------------------------------------------------


def build_model(impl: str, size: dict, length: int):
    """The seq2seq model of `impl` at `size`, with random weights, able to read `length` tokens."""
    common = dict(
        vocab_size=size["vocab_size"], d_model=size["d_model"], encoder_layers=size["layers"],
        decoder_layers=size["layers"], encoder_attention_heads=size["heads"], decoder_attention_heads=size["heads"],
        encoder_ffn_dim=size["ffn"], decoder_ffn_dim=size["ffn"], dropout=0.0, attention_dropout=0.0,
    )
    if impl in LSG_IMPLS:
        from lsg_bart import LSGBartConfig, LSGBartForConditionalGeneration

        config = LSGBartConfig(max_position_embeddings=round_up(length, LSG["block_size"]), **common, **LSG)
        return LSGBartForConditionalGeneration(config)
    if impl == "original":
        from lsg_converter.bart.modeling_lsg_bart import LSGBartConfig, LSGBartForConditionalGeneration

        config = LSGBartConfig(max_position_embeddings=round_up(length, LSG["block_size"]), **common, **LSG)
        return LSGBartForConditionalGeneration(config)
    if impl == "led":
        from transformers import LEDConfig, LEDForConditionalGeneration

        config = LEDConfig(max_encoder_position_embeddings=round_up(length, LED_WINDOW),
                           max_decoder_position_embeddings=1024, attention_window=LED_WINDOW, **common)
        return LEDForConditionalGeneration(config)
    if impl == "bart":
        from transformers import BartConfig, BartForConditionalGeneration

        config = BartConfig(max_position_embeddings=length, **common)
        return BartForConditionalGeneration(config)
    raise ValueError(f"unknown implementation {impl!r}")


# torch.ao.quantization is deprecated (torch 2.10 and later warn when it quantises, twice) but still ships, and its
# dynamic int8 is the fastest int8 form measured on CPU (`int8_forms.py`, docs/performance.md): the form recommended,
# with its warnings silenced. The same as `lsg_bart.summarize.dynamic_int8`, kept here because before_after.py runs
# these scripts against older versions of the package, which lack it.
TORCH_AO_DEPRECATIONS = r"torch\.(ao\.quantization is|quantize_per_tensor,.*are) deprecated"


def dynamic_int8(model):
    """`model` with every `nn.Linear` in PyTorch's dynamic int8 form, without torch.ao's deprecation warnings."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TORCH_AO_DEPRECATIONS)
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def step_bytes(model, length: int, batch: int, beams: int, new_tokens: int) -> int:
    """What one decoding step of LSG-BART must read: decoder weights and LM head (not the cross-attention key and
    value projections, applied once per input), one set of cross-attention keys and values per input, and the
    self-attention cache of every beam at its mean length."""
    decoder = model.model.decoder
    cross_kv = {id(p) for layer in decoder.layers for p in (*layer.encoder_attn.k_proj.parameters(),
                                                            *layer.encoder_attn.v_proj.parameters())}
    weights = sum(p.numel() * p.element_size() for p in decoder.parameters() if id(p) not in cross_kv)
    weights -= decoder.embed_tokens.weight.numel() * decoder.embed_tokens.weight.element_size()  # a row lookup
    weights += model.lm_head.weight.numel() * model.lm_head.weight.element_size()
    config, item = model.config, model.lm_head.weight.element_size()
    encoder_positions = length + config.num_global_tokens
    cross = batch * config.decoder_layers * 2 * encoder_positions * config.d_model * item
    self_cache = batch * beams * config.decoder_layers * 2 * (new_tokens / 2) * config.d_model * item
    return int(weights + cross + self_cache)


def measure(task: dict) -> dict:
    """Build the model, time one encoder + generate, and measure its peak memory growth."""
    import gc

    import torch

    torch.set_num_threads(task["threads"])
    impl, size, length = task["impl"], SIZES[task["size"]], task["length"]
    batch, beams, new_tokens = task["batch"], task["beams"], task["new_tokens"]
    torch.manual_seed(task["seed"])
    model = build_model(impl, size, length).eval()
    if impl == "lsg_bf16":
        model.to(torch.bfloat16)
    if impl == "lsg_int8":
        model = dynamic_int8(model)
    if impl == "lsg_compiled":
        model.forward = torch.compile(model.forward, fullgraph=True)
    generator = torch.Generator().manual_seed(task["seed"])
    input_ids = torch.randint(4, size["vocab_size"], (batch, length), generator=generator)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if impl == "led":
        inputs["global_attention_mask"] = torch.zeros_like(input_ids)
        inputs["global_attention_mask"][:, 0] = 1
    settings = dict(num_beams=beams, min_new_tokens=new_tokens, max_new_tokens=new_tokens, do_sample=False,
                    length_penalty=1.0, no_repeat_ngram_size=0, early_stopping=False, use_cache=True)
    if impl == "lsg_compiled":
        settings["cache_implementation"] = "static"
    encoder_times = []
    encoder = model.get_encoder()
    encoder.register_forward_pre_hook(lambda *args: encoder_times.append(-time.perf_counter()))
    encoder.register_forward_hook(lambda *args: encoder_times.append(time.perf_counter()))
    with torch.inference_mode():  # warm-up on a short input: kernels chosen, pools allocated
        if impl == "lsg_compiled":  # compiled for the shapes of the timed run
            model.generate(**inputs, **settings)
        else:
            short = {key: value[:, : min(length, 512)] for key, value in inputs.items()}
            model.generate(**short, **{**settings, "min_new_tokens": 2, "max_new_tokens": 2})
    encoder_times.clear()
    gc.collect()
    peak_reset = reset_peak_memory()
    before = read_memory_mb()
    with torch.inference_mode():
        start = time.perf_counter()
        output = model.generate(**inputs, **settings)
        total = time.perf_counter() - start
    after = read_memory_mb()
    encoder_s = sum(encoder_times)
    generated = output.shape[1] - 1  # the decoder start token is not generated
    result = dict(
        total_s=total, encoder_s=encoder_s, step_s=(total - encoder_s) / generated, generated_tokens=generated,
        tokens_per_s=batch * generated / total, baseline_mb=before["rss"], peak_mb=after["peak"],
        extra_mb=after["peak"] - before["rss"],
        memory_method="VmHWM reset after build" if peak_reset else "lifetime VmHWM (reset not allowed)",
        output_ids=output.tolist(),
    )
    if impl in ("lsg", "lsg_bf16"):
        result["bandwidth_gb_s"] = copy_bandwidth_gb_s()
        result["step_bytes"] = step_bytes(model, length, batch, beams, new_tokens)
        result["floor_step_s"] = result["step_bytes"] / (result["bandwidth_gb_s"] * 1e9)
    return result


# ---------------------------------------------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------------------------------------------


def plan(args) -> list[dict]:
    """The settings of this run, in order."""
    tasks = []
    grid = itertools.product(args.lengths, args.batches, args.beams, args.new_tokens, args.impls)
    for length, batch, beams, new_tokens, impl in grid:
        if impl == "bart" and length > BART_MAX_LENGTH:
            continue
        tasks.append(dict(impl=impl, length=length, batch=batch, beams=beams, new_tokens=new_tokens,
                          size=args.size, threads=args.threads, seed=args.seed))
    return tasks


def agreement(rows) -> list[dict]:
    """bf16, int8 and compiled against fp32 LSG outputs of the same setting: share of identical generated tokens
    and ROUGE-L."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    key = ("length", "batch", "beams", "new_tokens")
    fp32 = {tuple(r[k] for k in key): r for r in rows if r["impl"] == "lsg" and r["status"] == "ok"}
    results = []
    for row in rows:
        reference = fp32.get(tuple(row[k] for k in key))
        if row["impl"] not in LSG_IMPLS[1:] or row["status"] != "ok" or reference is None:
            continue
        same = total = 0
        rouge = []
        for ours, ref in zip(row["output_ids"], reference["output_ids"]):
            same += sum(a == b for a, b in zip(ours[1:], ref[1:]))
            total += len(ref) - 1
            rouge.append(scorer.score(" ".join(map(str, ref[1:])), " ".join(map(str, ours[1:])))["rougeL"].fmeasure)
        results.append({**{k: row[k] for k in key}, "impl": row["impl"], "identical_tokens": same / total,
                         "rougeL": sum(rouge) / len(rouge)})
    return results


def fmt(value, pattern="{:.2f}"):
    return "" if value is None else pattern.format(value)


def markdown(results) -> str:
    """The results as markdown tables: every setting, then lsg against the others, then bf16 agreement."""
    lines = [f"# Encoder + generate, {results['date']}", "", f"Command: `{results['command']}`", "",
             f"{limits_sentence(results['machine'])}.", "",
             "| impl | length | batch | beams | new tokens | total s | encoder s | s/step | floor s/step | "
             "tokens/s | extra MB | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['impl']} | {r['length']} | {r['batch']} | {r['beams']} | {r['new_tokens']} | "
                     f"{fmt(r.get('total_s'))} | {fmt(r.get('encoder_s'))} | {fmt(r.get('step_s'), '{:.3f}')} | "
                     f"{fmt(r.get('floor_step_s'), '{:.3f}')} | {fmt(r.get('tokens_per_s'), '{:.1f}')} | "
                     f"{fmt(r.get('extra_mb'), '{:.0f}')} | {r['status']} {r.get('note', '')} |")
    lines += ["", "## lsg against the others (same run; > 1 means lsg is faster / uses less)", "",
              "| length | batch | beams | new tokens | vs | speed-up | memory ratio |", "|---|---|---|---|---|---|---|"]
    for c in results["comparisons"]:
        lines.append(f"| {c['length']} | {c['batch']} | {c['beams']} | {c['new_tokens']} | {c['other']} | "
                     f"{c['speedup']:.2f}x | {fmt(c['memory_ratio'], '{:.2f}x')} |")
    if results["agreement"]:
        lines += ["", "## against fp32 lsg (same inputs; random weights)", "",
                  "| impl | length | batch | beams | new tokens | identical tokens | ROUGE-L |",
                  "|---|---|---|---|---|---|---|"]
        for a in results["agreement"]:
            lines.append(f"| {a['impl']} | {a['length']} | {a['batch']} | {a['beams']} | {a['new_tokens']} | "
                         f"{a['identical_tokens']:.1%} | {a['rougeL']:.3f} |")
    return "\n".join(lines) + "\n"


def comparisons(rows) -> list[dict]:
    key = ("length", "batch", "beams", "new_tokens")
    ours = {tuple(r[k] for k in key): r for r in rows if r["impl"] == "lsg" and r["status"] == "ok"}
    found = []
    for row in rows:
        mine = ours.get(tuple(row[k] for k in key))
        if row["impl"] == "lsg" or row["status"] != "ok" or mine is None:
            continue
        memory = row["extra_mb"] / mine["extra_mb"] if mine["extra_mb"] > 0 else None
        found.append({**{k: row[k] for k in key}, "other": row["impl"], "speedup": row["total_s"] / mine["total_s"],
                      "memory_ratio": memory})
    return found


def plot(results, path: Path) -> None:
    """Bars of seconds per setting and implementation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if r["status"] == "ok"]
    settings = sorted({(r["length"], r["batch"], r["beams"], r["new_tokens"]) for r in rows})
    impls = [impl for impl in IMPLS if any(r["impl"] == impl for r in rows)]
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(settings)), 4))
    width = 0.8 / max(1, len(impls))
    for index, impl in enumerate(impls):
        seconds = [next((r["total_s"] for r in rows if r["impl"] == impl and
                         (r["length"], r["batch"], r["beams"], r["new_tokens"]) == s), 0) for s in settings]
        axis.bar([i + index * width for i in range(len(settings))], seconds, width, label=impl)
    axis.set_xticks([i + width * (len(impls) - 1) / 2 for i in range(len(settings))])
    axis.set_xticklabels([f"{s[0]} tok\nbatch {s[1]}, {s[2]} beams\n{s[3]} new" for s in settings], fontsize=8)
    axis.set_ylabel("seconds (encoder + generate)")
    axis.set_title(f"Summarisation end to end, {results['threads']} CPU threads")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def impl_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in IMPLS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown implementation(s) {unknown or text!r}; choose from {', '.join(IMPLS)}")
    return names


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int_list, default=[4096, 16384], help="input lengths (default 4096,16384)")
    parser.add_argument("--beams", type=int_list, default=[4], help="numbers of beams (default 4)")
    parser.add_argument("--new-tokens", type=int_list, default=[256], help="forced new tokens (default 256)")
    parser.add_argument("--batches", type=int_list, default=[1], help="batch sizes (default 1)")
    parser.add_argument("--impls", type=impl_list, default=None,
                        help=f"comma-separated, from {','.join(IMPLS)} (default: all; original needs "
                             "--original-python)")
    parser.add_argument("--full-grid", action="store_true",
                        help="lengths 4096,16384 x beams 1,4 x new tokens 128,256 x batch 1,4 (hours on 2 cores)")
    parser.add_argument("--original-python", metavar="PATH",
                        help="interpreter with lsg-converter 0.1.9 and transformers 4.38 for the original")
    parser.add_argument("--quick", action="store_true", help="tiny model, 1,024 tokens, 8 new tokens: a smoke test")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run (default 2)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per setting before it is skipped")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help=f"default {DEFAULT_OUT_DIR}")
    parser.add_argument("--worker", metavar="TASK", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.size = "base"
    if args.full_grid:
        args.lengths, args.beams, args.new_tokens, args.batches = [4096, 16384], [1, 4], [128, 256], [1, 4]
    if args.quick:
        args.size, args.lengths, args.new_tokens, args.batches = "tiny", [1024], [8], [1]
    if args.impls is None:
        args.impls = [impl for impl in IMPLS if impl != "original" or args.original_python]
    if "original" in args.impls and not args.original_python:
        parser.error("original runs in another interpreter: name it with --original-python")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker, measure)
        return 0
    from tqdm import tqdm

    original = check_original_python(args.original_python) if args.original_python else None
    limits = machine_limits(args.threads, quick=args.size == "tiny", timeout=args.timeout)
    tasks = plan(args)
    rows = []
    for task in tqdm(tasks, desc="settings", unit="run"):
        python = args.original_python if task["impl"] == "original" else sys.executable
        rows.append({**task, **run_in_subprocess(task, args.timeout, python, script=__file__)})
    results = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"), command="python " + " ".join(sys.argv),
        machine={"python": platform.python_version(), **limits}, threads=args.threads, original=original,
        rows=rows, comparisons=comparisons(rows), agreement=agreement(rows),
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results.json").write_text(json.dumps(results, indent=1))
    (args.out_dir / "results.md").write_text(markdown(results))
    plot(results, args.out_dir / "results.png")
    print(markdown(results))
    failed = [r for r in rows if r["status"] != "ok"]
    return 1 if failed and len(failed) == len(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
