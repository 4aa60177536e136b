#!/usr/bin/env python
"""Benchmark lsg-bart's LSG encoder against full BART, LED and BigBird-Pegasus on CPU.

Every setting (implementation x mode x length) runs in a fresh Python subprocess, so that its peak memory
growth is its own. Each subprocess builds one encoder with random weights at bart-base width and depth,
measures the resident memory, runs one warm-up and then `--repeats` timed runs (2 when the warm-up is slow),
and reports the median time and the peak resident memory growth ("extra MB").

The run writes `results.json`, `results.md` and `results.png` to `--out-dir`. The original LSG implementation
(lsg-converter 0.1.9) cannot run on transformers 5: `--original-python` measures it in the same run, in
subprocesses of another interpreter that has transformers 4.38 (this file is its worker too, so it imports only
the standard library at module level); `--original` adds its figures from a file instead.

Examples:
    python benchmarks/run_benchmark.py                                  # full grid (about an hour)
    python benchmarks/run_benchmark.py --original-python orig/bin/python
    python benchmarks/run_benchmark.py --original benchmarks/anchors_original.json
    python benchmarks/run_benchmark.py --quick                          # smoke test, < 1 min
    python benchmarks/run_benchmark.py --impls lsg_norm,bart_sdpa --lengths 1024,4096 --modes infer
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from core import (  # noqa: E402
    cpu_description,
    limits_sentence,
    machine_limits,
    read_memory_mb,
    reset_peak_memory,
    round_up,
    run_in_subprocess,
    worker_main,
)

LENGTHS = (1024, 4096, 8192, 16384)
MODES = ("infer", "train")
DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "results"

# Encoder sizes: bart-base (d_model 768, 12 heads, ffn 3072, 6 layers) and a tiny one for smoke tests.
MODEL_SIZES = {
    "base": {"d_model": 768, "heads": 12, "ffn": 3072, "layers": 6, "vocab_size": 50265},
    "tiny": {"d_model": 64, "heads": 4, "ffn": 256, "layers": 2, "vocab_size": 1000},
}
# Dropout of every implementation in train mode: the BART defaults (LED and BigBird-Pegasus use the same).
DROPOUT = {"dropout": 0.1, "attention_dropout": 0.0, "activation_dropout": 0.0}
# The main LSG setting, whose FLOPs define the "LSG floor".
MAIN_LSG = {"block_size": 128, "sparse_block_size": 128, "sparsity_factor": 2, "num_global_tokens": 1}


# ---------------------------------------------------------------------------------------------------------------
# Implementations
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Impl:
    """One implementation/setting of the grid.

    key: the name used by `--impls`; impl and setting: the table columns; family: which encoder is built;
    options: config overrides; train: part of the default training grid; bf16: run in bfloat16 and compare
    with float32; compiled: run under `torch.compile` (inductor; the warm-up compiles); mem: estimated extra MB
    at bart-base size as (MB per token, MB per token^2) per mode.
    """

    key: str
    impl: str
    setting: str
    family: str
    options: dict = field(default_factory=dict)
    train: bool = False
    bf16: bool = False
    mem: dict = field(default_factory=dict)
    compiled: bool = False


def lsg(key, sparsity="norm", block=128, sparse=128, factor=2, impl="lsg", train=False, bf16=False, compiled=False,
        **extra):
    """An LSG setting of this project; `extra` goes to the config (e.g. attn_implementation)."""
    options = {
        "sparsity_type": sparsity,
        "block_size": block,
        "sparse_block_size": sparse,
        "sparsity_factor": factor,
        "num_global_tokens": 1,
        **extra,
    }
    scale = 0.6 if bf16 else (1.5 if extra.get("attn_implementation") == "eager" else 1.0)
    mem = {"infer": (0.25 * scale, 0.0), "train": (0.8 * scale, 0.0)}
    return Impl(key, impl, f"{sparsity} b{block} s{sparse} f{factor}", "lsg", options, train, bf16, mem, compiled)


IMPLS = [
    lsg("lsg_norm", "norm", train=True),
    lsg("lsg_none", "none"),
    lsg("lsg_pooling", "pooling"),
    lsg("lsg_lsh", "lsh"),
    lsg("lsg_stride", "stride"),
    lsg("lsg_block_stride", "block_stride"),
    lsg("lsg_bos_pooling", "bos_pooling"),
    lsg("lsg_norm_b64", "norm", block=64, sparse=64, factor=4),
    lsg("lsg_eager", "norm", impl="lsg_eager", attn_implementation="eager"),
    lsg("lsg_sdpa", "norm", impl="lsg_sdpa", lsg_kernel="sdpa"),  # the public-ops kernel, against "auto"'s choice
    lsg("lsg_bf16", "norm", impl="lsg_bf16", bf16=True),
    lsg("lsg_compiled", "norm", impl="lsg_compiled", compiled=True),
    Impl("bart_sdpa", "bart_sdpa", "", "bart", {"attn_implementation": "sdpa"}, True,
         mem={"infer": (0.04, 0.0), "train": (0.45, 0.0)}),
    Impl("bart_eager", "bart_eager", "", "bart", {"attn_implementation": "eager"}, True,
         mem={"infer": (0.05, 1.0e-4), "train": (0.45, 6.0e-4)}),
    Impl("led_w256", "led", "window 256", "led", {"attention_window": 256}, True,
         mem={"infer": (0.27, 0.0), "train": (1.0, 0.0)}),
    Impl("led_w1024", "led", "window 1024", "led", {"attention_window": 1024}, True,
         mem={"infer": (0.28, 0.0), "train": (1.4, 0.0)}),
    Impl("bigbird", "bigbird", "block 64, 3 random", "bigbird",
         {"block_size": 64, "num_random_blocks": 3, "attention_type": "block_sparse"}, True,
         mem={"infer": (0.21, 4.3e-5), "train": (0.72, 1.5e-4)}),
]
# The original implementation (lsg-converter 0.1.9) in the main setting. It needs transformers 4.38, so it runs
# only with --original-python, in that interpreter; its memory estimate comes from anchors_original.json.
ORIGINAL_IMPL = Impl("lsg_original", "lsg_original", "norm b128 s128 f2", "original",
                     {"sparsity_type": "norm", **MAIN_LSG}, True,
                     mem={"infer": (0.09, 8.3e-6), "train": (0.85, 0.0)})
IMPLS_BY_KEY = {impl.key: impl for impl in [*IMPLS, ORIGINAL_IMPL]}
QUICK_IMPLS = ("lsg_norm", "lsg_bf16", "bart_sdpa")
QUICK_TRAIN = ("lsg_norm",)  # the smoke grid trains only this one, to stay well under a minute


def estimate_extra_mb(impl: Impl, mode: str, length: int, size: dict) -> float:
    """Rough peak memory growth of a setting, from peer measurements at bart-base size, scaled to `size`."""
    per_token, per_token2 = impl.mem.get(mode, (0.0, 0.0))
    base = MODEL_SIZES["base"]
    linear_scale = size["d_model"] * size["layers"] / (base["d_model"] * base["layers"])
    quadratic_scale = size["heads"] * size["layers"] / (base["heads"] * base["layers"])
    return per_token * length * linear_scale + per_token2 * length**2 * quadratic_scale


# ---------------------------------------------------------------------------------------------------------------
# Worker side: build one encoder, measure it (runs in a fresh subprocess)
# ---------------------------------------------------------------------------------------------------------------


def build_encoder(impl: Impl, size: dict, length: int):
    """The encoder of `impl` with random weights, at `size`, able to read `length` tokens.

    The encoder class is built on its own: the same module as `LSGBartModel(config).encoder`,
    `BartModel(config).encoder`, ... without the decoder. Position tables are rounded up to the padding
    that LSG (block size), LED (attention window) and BigBird (block size) apply.
    """
    common = {
        "vocab_size": size["vocab_size"],
        "d_model": size["d_model"],
        "encoder_layers": size["layers"],
        "encoder_attention_heads": size["heads"],
        "encoder_ffn_dim": size["ffn"],
        "decoder_layers": 1,
        "decoder_attention_heads": size["heads"],
        "decoder_ffn_dim": size["ffn"],
        **DROPOUT,
    }
    if impl.family == "lsg":
        from lsg_bart import LSGBartConfig
        from lsg_bart.modeling_lsg_bart import LSGBartEncoder

        positions = round_up(length, impl.options["block_size"])
        return LSGBartEncoder(LSGBartConfig(max_position_embeddings=positions, **common, **impl.options))
    if impl.family == "original":  # only in the --original-python interpreter (transformers 4.38)
        from lsg_converter.bart.modeling_lsg_bart import LSGBartConfig, LSGBartEncoder

        positions = round_up(length, impl.options["block_size"])
        return LSGBartEncoder(LSGBartConfig(max_position_embeddings=positions, **common, **impl.options))
    if impl.family == "bart":
        from transformers import BartConfig
        from transformers.models.bart.modeling_bart import BartEncoder

        return BartEncoder(BartConfig(max_position_embeddings=length, **common, **impl.options))
    if impl.family == "led":
        from transformers import LEDConfig
        from transformers.models.led.modeling_led import LEDEncoder

        positions = round_up(length, impl.options["attention_window"])
        return LEDEncoder(LEDConfig(max_encoder_position_embeddings=positions, **common, **impl.options))
    if impl.family == "bigbird":
        from transformers import BigBirdPegasusConfig
        from transformers.models.bigbird_pegasus.modeling_bigbird_pegasus import BigBirdPegasusEncoder

        positions = round_up(length, impl.options["block_size"])
        config = BigBirdPegasusConfig(max_position_embeddings=positions, **common, **impl.options)
        return BigBirdPegasusEncoder(config)
    raise ValueError(f"unknown family {impl.family!r}")


def make_inputs(impl: Impl, size: dict, length: int, seed: int) -> dict:
    """Random token ids (batch 1) with an all-ones attention mask; LED gets global attention on token 0.

    The original's encoder gets `return_dict=True`: without it, it returns a tuple whatever its config says.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    inputs = {
        "input_ids": torch.randint(4, size["vocab_size"], (1, length), generator=generator),
        "attention_mask": torch.ones(1, length, dtype=torch.long),
    }
    if impl.family == "led":
        global_mask = torch.zeros(1, length, dtype=torch.long)
        global_mask[:, 0] = 1
        inputs["global_attention_mask"] = global_mask
    if impl.family == "original":
        inputs["return_dict"] = True
    return inputs


def encoder_output(encoder, inputs):
    """Final hidden states of one encoder forward pass."""
    return encoder(**inputs).last_hidden_state


def infer_step(encoder, inputs):
    """One inference forward pass."""
    import torch

    with torch.inference_mode():
        encoder_output(encoder, inputs)


def train_step(encoder, inputs):
    """Forward and backward of the loss `mean(hidden states)`; gradients are freed afterwards."""
    loss = encoder_output(encoder, inputs).float().mean()
    loss.backward()
    encoder.zero_grad(set_to_none=True)


def bf16_errors(encoder, fp32_state: dict, inputs) -> dict:
    """Errors of the bfloat16 `encoder`'s output against the float32 output on `fp32_state` (eval mode).

    The bf16 weights are `fp32_state` rounded; the encoder is left in float32 afterwards.
    """
    import torch

    encoder.eval()
    with torch.inference_mode():
        output = encoder_output(encoder, inputs).float()
        encoder.to(torch.float32)
        encoder.load_state_dict(fp32_state)
        reference = encoder_output(encoder, inputs)
    diff = (output - reference).abs()
    return {
        "max_abs_err": diff.max().item(),
        "rel_max_err": (diff.max() / reference.abs().max()).item(),
        "rel_l2_err": ((output - reference).norm() / reference.norm()).item(),
    }


def time_runs(step, encoder, inputs, repeats: int, slow_s: float) -> tuple[list, float]:
    """One warm-up, then `repeats` timed runs (at most 2 when the warm-up took more than `slow_s`)."""
    start = time.perf_counter()
    step(encoder, inputs)
    warmup = time.perf_counter() - start
    if warmup > slow_s:
        repeats = min(repeats, 2)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(encoder, inputs)
        times.append(time.perf_counter() - start)
    return times, warmup


def measure_setting(task: dict) -> dict:
    """Build the encoder of `task`, then time it and measure its peak memory growth."""
    import gc

    import torch

    torch.set_num_threads(task["threads"])
    impl, size, length, mode = IMPLS_BY_KEY[task["key"]], task["size"], task["length"], task["mode"]
    torch.manual_seed(task["seed"])
    encoder = build_encoder(impl, size, length)
    inputs = make_inputs(impl, size, length, task["seed"])
    fp32_state = None
    if impl.bf16:  # the float32 weights are kept (in the baseline memory) to compare outputs after the runs
        fp32_state = {name: tensor.detach().clone() for name, tensor in encoder.state_dict().items()}
        encoder.to(torch.bfloat16)
    encoder.train(mode == "train")
    if impl.compiled:
        encoder = torch.compile(encoder)
    gc.collect()
    peak_reset = reset_peak_memory()
    before = read_memory_mb()
    step = train_step if mode == "train" else infer_step
    times, warmup = time_runs(step, encoder, inputs, task["repeats"], task["slow_s"])
    after = read_memory_mb()
    result = dict(
        times_s=times,
        warmup_s=warmup,
        median_s=statistics.median(times),
        baseline_mb=before["rss"],
        peak_mb=after["peak"],
        extra_mb=after["peak"] - before["rss"],
        memory_method="VmHWM reset after build" if peak_reset else "lifetime VmHWM (reset not allowed)",
    )
    if fp32_state is not None:
        result.update(bf16_errors(encoder, fp32_state, inputs))
    return result


# ---------------------------------------------------------------------------------------------------------------
# Parent side: plan the grid, run the subprocesses
# ---------------------------------------------------------------------------------------------------------------


def select_impls(names: str | None, quick: bool, original_python: str | None) -> list[Impl]:
    """The implementations named in `--impls` (comma-separated keys), or the default ones.

    The original implementation needs `--original-python`; given one, the default grids include it.
    """
    if names is None:
        defaults = [IMPLS_BY_KEY[key] for key in QUICK_IMPLS] if quick else list(IMPLS)
        return defaults + ([ORIGINAL_IMPL] if original_python else [])
    selected = []
    for name in (part.strip() for part in names.split(",") if part.strip()):
        if name not in IMPLS_BY_KEY:
            raise SystemExit(f"unknown implementation {name!r}; choose from {', '.join(IMPLS_BY_KEY)}")
        if name == ORIGINAL_IMPL.key and not original_python:
            raise SystemExit(f"{name} runs in another interpreter: name it with --original-python (see --help)")
        selected.append(IMPLS_BY_KEY[name])
    return selected


# Run by the --original-python interpreter: import the original's module, print the versions as JSON.
ORIGINAL_CHECK = """
import importlib.metadata, json, platform
import lsg_converter.bart.modeling_lsg_bart
packages = ("torch", "transformers", "lsg-converter")
print(json.dumps({"python": platform.python_version(), **{p: importlib.metadata.version(p) for p in packages}}))
"""


def check_original_python(path: str) -> dict:
    """The versions that the interpreter `path` runs the original with; exits with a message if it cannot."""
    install = f"{path} -m pip install torch transformers==4.38.2 lsg-converter==0.1.9"
    try:
        proc = subprocess.run([path, "-c", ORIGINAL_CHECK], capture_output=True, text=True, timeout=300)
    except OSError as error:
        raise SystemExit(f"--original-python {path}: cannot run this interpreter ({error.strerror})") from None
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit code {proc.returncode}"
        raise SystemExit(f"--original-python {path} cannot import lsg_converter.bart.modeling_lsg_bart ({reason}); "
                         f"install it there with `{install}`")
    versions = json.loads(proc.stdout.strip().splitlines()[-1])
    if versions["lsg-converter"] != "0.1.9" or not versions["transformers"].startswith("4.38."):
        print(f"warning: --original-python has lsg-converter {versions['lsg-converter']} and transformers "
              f"{versions['transformers']}; the figures are meant for 0.1.9 on 4.38.x", flush=True)
    return {"path": path, **versions}


def training_keys(impls, explicit_impls: bool, quick: bool) -> set:
    """Implementations that run in train mode.

    With an explicit `--impls`, all the listed ones; in the quick grid only `QUICK_TRAIN`; in the default grid
    those marked `train` (the LSG variants: other sparsity types, eager and bf16, run in inference only).
    """
    if explicit_impls:
        return {impl.key for impl in impls}
    if quick:
        return set(QUICK_TRAIN)
    return {impl.key for impl in impls if impl.train}


def plan_grid(impls, modes, lengths, train_keys) -> list:
    """Settings to run, in order: mode, implementation, length."""
    return [
        (impl, mode, length)
        for mode in modes
        for impl in impls
        if mode == "infer" or impl.key in train_keys
        for length in lengths
    ]


def base_row(impl: Impl, mode: str, length: int) -> dict:
    """The identifying fields of a result row."""
    return {
        "key": impl.key,
        "impl": impl.impl,
        "setting": impl.setting,
        "mode": mode,
        "length": length,
        "dtype": "bfloat16" if impl.bf16 else "float32",
        "source": "this run",
    }


def skip_reason(impl: Impl, mode: str, length: int, args, size: dict, failed: dict) -> str | None:
    """Why a setting is not run (memory estimate over the limit, or failed at a shorter length), else None."""
    if (impl.key, mode) in failed:
        return f"skipped: {failed[(impl.key, mode)]} at a shorter length"
    estimate = estimate_extra_mb(impl, mode, length, size)
    if estimate > args.max_mem_gb * 1024:
        return f"skipped: estimated {estimate / 1024:.1f} GB extra memory > limit {args.max_mem_gb:.1f} GB"
    return None


def progress_bar(total: int):
    """A tqdm progress bar when available, else a tiny stand-in; both have update(), write() and close()."""
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc="benchmark", unit="setting", dynamic_ncols=True)
    except ImportError:

        class Plain:
            def update(self, n=1):
                pass

            def write(self, text):
                print(text, flush=True)

            def close(self):
                pass

        return Plain()


def describe(row: dict) -> str:
    """One progress line for a finished setting."""
    name = f"{row['impl']} {row['setting']}".strip()
    where = f"{name:<32} {row['mode']:<5} {row['length']:>6}"
    if row["status"] != "ok":
        return f"{where}  {row['note']}"
    return f"{where}  {row['median_s']:8.3f} s  {row['tokens_per_s']:8.0f} tok/s  {row['extra_mb']:8.0f} MB extra"


def run_grid(plan, args, size, results, save) -> list[dict]:
    """Run every planned setting in its own subprocess, saving the results after each one."""
    bar = progress_bar(len(plan))
    failed = {}
    for impl, mode, length in plan:
        row = base_row(impl, mode, length)
        reason = skip_reason(impl, mode, length, args, size, failed)
        if reason:
            row.update(status="skipped", note=reason)
        else:
            task = {
                "kind": "setting",
                "key": impl.key,
                "mode": mode,
                "length": length,
                "size": size,
                "threads": args.threads,
                "repeats": args.repeats,
                "slow_s": args.slow_s,
                "seed": args.seed,
            }
            python = args.original_python if impl.family == "original" else sys.executable
            row.update(run_in_subprocess(task, args.timeout, python, script=__file__))
            if row["status"] == "ok":
                row["tokens_per_s"] = length / row["median_s"]
                row.setdefault("note", "")
            else:
                failed[(impl.key, mode)] = row["status"]
        results["rows"].append(row)
        save(results)
        bar.write(describe(row))
        bar.update()
    bar.close()
    return results["rows"]


# ---------------------------------------------------------------------------------------------------------------
# Derived figures: LSG floor, bf16 and original comparisons
# ---------------------------------------------------------------------------------------------------------------


def lsg_keys_per_query(lsg_setting: dict) -> int:
    """Keys seen by one query of the main LSG setting: G + 2*sbs + 3*bs (641 for norm 128/128/2, 1 global)."""
    return lsg_setting["num_global_tokens"] + 2 * lsg_setting["sparse_block_size"] + 3 * lsg_setting["block_size"]


def lsg_floor_flops(length: int, size: dict, lsg_setting: dict = MAIN_LSG) -> float:
    """FLOPs of an LSG encoder forward: per token and layer 2*(4d^2 + 2*d*ffn) + 2*2*K*d."""
    d, ffn, keys = size["d_model"], size["ffn"], lsg_keys_per_query(lsg_setting)
    per_token_layer = 2 * (4 * d * d + 2 * d * ffn) + 2 * 2 * keys * d
    return size["layers"] * length * per_token_layer


def floor_table(lengths, size: dict, gflops: float) -> dict:
    """The LSG floor (GFLOP and seconds at `gflops`) for each length."""
    table = {}
    for length in lengths:
        flops = lsg_floor_flops(length, size)
        table[str(length)] = {"gflop": flops / 1e9, "seconds": flops / (gflops * 1e9)}
    return table


def add_floor_fractions(rows, size: dict, gflops: float | None) -> None:
    """Set "floor_fraction" = LSG-floor time / median time on successful fp32 inference rows."""
    for row in rows:
        if gflops and row.get("status") == "ok" and row["mode"] == "infer" and row["dtype"] == "float32":
            row["floor_fraction"] = lsg_floor_flops(row["length"], size) / (gflops * 1e9) / row["median_s"]


def find_row(rows, **fields):
    """The first successful row whose fields match, else None."""
    for row in rows:
        if row.get("status") == "ok" and all(row.get(name) == value for name, value in fields.items()):
            return row
    return None


def bf16_comparison(rows) -> list[dict]:
    """bf16 LSG rows against the fp32 LSG row of the same setting, mode and length in this run."""
    comparison = []
    for row in rows:
        if row.get("status") != "ok" or row["impl"] != "lsg_bf16":
            continue
        fp32 = find_row(rows, impl="lsg", setting=row["setting"], mode=row["mode"], length=row["length"])
        comparison.append(
            {
                "setting": row["setting"],
                "mode": row["mode"],
                "length": row["length"],
                "fp32_s": fp32["median_s"] if fp32 else None,
                "bf16_s": row["median_s"],
                "speedup": fp32["median_s"] / row["median_s"] if fp32 else None,
                "fp32_extra_mb": fp32["extra_mb"] if fp32 else None,
                "bf16_extra_mb": row["extra_mb"],
                "max_abs_err": row["max_abs_err"],
                "rel_max_err": row["rel_max_err"],
                "rel_l2_err": row["rel_l2_err"],
            }
        )
    return comparison


def load_original(path: str | None) -> dict | None:
    """The original implementation's figures from `path` as result rows, or None without a file.

    The file's figures are at bart-base size; their LSG-floor fractions use the file's `matmul_gflops`.
    """
    if not path:
        return None
    data = json.loads(Path(path).read_text())
    label = f"original (from file, measured {data.get('measured', 'unknown date')})"
    rows = []
    for entry in data["rows"]:
        rows.append(
            {
                "key": "original",
                "impl": label,
                "setting": entry["setting"],
                "mode": entry["mode"],
                "length": entry["length"],
                "dtype": "float32",
                "source": str(path),
                "status": "ok",
                "note": "",
                "median_s": entry["median_s"],
                "tokens_per_s": entry["length"] / entry["median_s"],
                "extra_mb": entry["extra_mb"],
            }
        )
    add_floor_fractions(rows, MODEL_SIZES["base"], data.get("matmul_gflops"))
    return {**{k: v for k, v in data.items() if k != "rows"}, "label": label, "rows": rows}


def measured_original(rows) -> bool:
    """Whether this run measured the original implementation itself (`lsg_original` rows, failed ones too)."""
    return any(row["key"] == ORIGINAL_IMPL.key for row in rows)


def original_comparison(rows, original: dict | None, size_name: str) -> list[dict]:
    """Speed-up (original time / this project's time) and memory ratio where both were measured.

    The original's figures are this run's `lsg_original` rows when it measured them; else those of the
    `--original` file, only for runs at bart-base size (the size of the file's figures). Failed `lsg_original`
    settings are not replaced by the file's figures: those come from another day.
    """
    if measured_original(rows):
        originals = [row for row in rows if row["key"] == ORIGINAL_IMPL.key and row.get("status") == "ok"]
    elif original and size_name == "base":
        originals = original["rows"]
    else:
        return []
    comparison = []
    for old in originals:
        new = find_row(rows, impl="lsg", setting=old["setting"], mode=old["mode"], length=old["length"])
        if new is None:
            continue
        comparison.append(
            {
                "setting": old["setting"],
                "mode": old["mode"],
                "length": old["length"],
                "original_source": old["source"],
                "original_s": old["median_s"],
                "lsg_bart_s": new["median_s"],
                "speedup": old["median_s"] / new["median_s"],
                "original_extra_mb": old["extra_mb"],
                "lsg_bart_extra_mb": new["extra_mb"],
                "memory_ratio": old["extra_mb"] / new["extra_mb"] if new["extra_mb"] > 0 else None,
            }
        )
    return comparison


def finalize(results: dict, original: dict | None) -> dict:
    """Add the floor fractions and the comparison tables to `results`."""
    size, gflops = results["meta"]["size"], results["matmul"]["float32"]["best"]
    add_floor_fractions(results["rows"], size, gflops)
    results["original"] = original
    results["comparisons"] = {
        "bf16": bf16_comparison(results["rows"]),
        "original": original_comparison(results["rows"], original, results["meta"]["size_name"]),
    }
    return results


# ---------------------------------------------------------------------------------------------------------------
# Reports: markdown and plot
# ---------------------------------------------------------------------------------------------------------------


def fmt(value, pattern="{:.2f}", empty=""):
    """Format a number, or `empty` for None."""
    return empty if value is None else pattern.format(value)


def markdown_header(results: dict) -> list[str]:
    """Machine, versions, model size, matmul rates and copy bandwidth."""
    meta, matmul = results["meta"], results["matmul"]
    limits = results.get("limits")  # not in results from before the copy bandwidth was measured here
    copy_bandwidth = f" Copy bandwidth: {limits['copy_gb_s']:.1f} GB/s." if limits else ""
    size = meta["size"]
    fp32, bf16 = matmul["float32"], matmul["bfloat16"]
    shapes = ", ".join(f"{shape} {rate:.1f}" for shape, rate in fp32["shapes"].items())
    bf16_shapes = ", ".join(f"{shape} {rate:.1f}" for shape, rate in bf16["shapes"].items())
    floor = "; ".join(
        f"{int(length):,} tokens {entry['gflop']:.3g} GFLOP = {entry['seconds']:.3g} s"
        for length, entry in results["floor"].items()
    )
    return [
        f"# lsg-bart benchmark, {meta['date']}",
        "",
        f"{meta['cpu']}; {meta['threads']} threads; torch {meta['torch']}, transformers {meta['transformers']}"
        f"{original_versions(meta)}; load average {meta.get('load_average_start', float('nan')):.1f} before the run; "
        f"command `{meta.get('command', '')}`.",
        f"Encoder only, batch 1, random weights, model size `{meta['size_name']}`: d_model {size['d_model']}, "
        f"{size['heads']} heads, ffn {size['ffn']}, {size['layers']} layers. fp32 unless marked bf16. "
        f"Median of {meta['repeats']} run{'s' if meta['repeats'] != 1 else ''} "
        f"(at most 2 when the warm-up took over {meta['slow_s']:.0f} s) after "
        "one warm-up, each setting in a fresh process. extra MB = peak resident memory growth over the built "
        "model. train = forward + backward of mean(hidden states), train mode, dropout 0.1 "
        "(attention and activation dropout 0).",
        "",
        f"Matmul rate fp32: {fp32['best']:.1f} GFLOP/s (best of {shapes}). "
        f"bf16: {bf16['best']:.1f} GFLOP/s (best of {bf16_shapes}).{copy_bandwidth}",
        "",
        f"LSG floor (FLOPs of the LSG encoder, norm {MAIN_LSG['block_size']}/{MAIN_LSG['sparse_block_size']}/"
        f"{MAIN_LSG['sparsity_factor']}, {MAIN_LSG['num_global_tokens']} global: "
        f"{lsg_keys_per_query(MAIN_LSG)} keys per query, at the fp32 matmul rate): {floor}.",
        "",
    ]


def original_versions(meta: dict) -> str:
    """", lsg_original on ..." naming the --original-python interpreter and its versions, or "" without one."""
    original = meta.get("original_python")
    if not original:
        return ""
    return (f" (lsg_original: lsg-converter {original['lsg-converter']}, torch {original['torch']}, "
            f"transformers {original['transformers']}, Python {original['python']}, run by `{original['path']}`)")


def markdown_results(rows, mode: str) -> list[str]:
    """The main table of one mode."""
    lines = [
        "| impl | setting | mode | length | median s | tokens/s | extra MB | LSG-floor / time | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["mode"] != mode:
            continue
        ok = row.get("status") == "ok"
        lines.append(
            "| "
            + " | ".join(
                [
                    row["impl"],
                    row["setting"],
                    row["mode"],
                    str(row["length"]),
                    fmt(row.get("median_s")) if ok else "",
                    fmt(row.get("tokens_per_s"), "{:.0f}") if ok else "",
                    fmt(row.get("extra_mb"), "{:.0f}") if ok else "",
                    fmt(row.get("floor_fraction"), "{:.0%}") if ok else "",
                    row.get("note", "").replace("|", "\\|"),
                ]
            )
            + " |"
        )
    return lines


def markdown_bf16(comparison) -> list[str]:
    """bf16 speed-up and error table."""
    if not comparison:
        return []
    lines = [
        "## bf16 vs fp32 (this project's LSG)",
        "",
        "Same random weights and input; errors compare the final hidden states of one eval-mode forward "
        "(relative max = max abs error / max |fp32 output|; relative L2 = ||bf16 - fp32|| / ||fp32||).",
        "",
        "| setting | mode | length | fp32 s | bf16 s | speed-up | fp32 extra MB | bf16 extra MB | max abs err "
        "| relative max err | relative L2 err |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in comparison:
        cells = [
            c["setting"], c["mode"], str(c["length"]), fmt(c["fp32_s"]), fmt(c["bf16_s"]),
            fmt(c["speedup"], "{:.2f}x"), fmt(c["fp32_extra_mb"], "{:.0f}"), fmt(c["bf16_extra_mb"], "{:.0f}"),
            fmt(c["max_abs_err"], "{:.3g}"), fmt(c["rel_max_err"], "{:.2%}"), fmt(c["rel_l2_err"], "{:.2%}"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def comparison_table(comparison) -> list[str]:
    """The speed-up and memory-ratio table of the original comparison."""
    lines = [
        "| setting | mode | length | original s | lsg-bart s | speed-up | original extra MB | lsg-bart extra MB "
        "| memory ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in comparison:
        cells = [
            c["setting"], c["mode"], str(c["length"]), fmt(c["original_s"]), fmt(c["lsg_bart_s"]),
            fmt(c["speedup"], "{:.2f}x"), fmt(c["original_extra_mb"], "{:.0f}"),
            fmt(c["lsg_bart_extra_mb"], "{:.0f}"), fmt(c["memory_ratio"], "{:.2f}x"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def original_file_source(original: dict) -> str:
    """The file that the original's figures came from."""
    return original["rows"][0]["source"] if original["rows"] else ""


def markdown_original(results: dict) -> list[str]:
    """Speed-up over the original implementation: measured in this run (`lsg_original`), else from the file."""
    original, comparison = results["original"], results["comparisons"]["original"]
    ratios = "speed-up = original time / lsg-bart time; memory ratio = original extra MB / lsg-bart extra MB."
    if measured_original(results["rows"]):
        lines = [
            "## lsg-bart vs the original implementation (measured in this run)",
            "",
            "Original: the `lsg_original` rows, measured in this run like every other setting (fresh process, same "
            f"threads, size, seed and lengths) by another interpreter{original_versions(results['meta'])}. {ratios}",
        ]
        if original:
            lines.append(
                f"The figures from `{original_file_source(original)}` ({original['label']}) come from another run: "
                "they are listed in the tables above, but neither compared here nor plotted."
            )
        lines.append("")
        if not comparison:
            return lines + ["No setting was measured by both `lsg_original` and `lsg`.", ""]
        return lines + comparison_table(comparison) + [""]
    if not original:
        return []
    lines = [
        "## lsg-bart vs the original implementation",
        "",
        f"Original figures: {original['label']}, from `{original_file_source(original)}` (transformers "
        f"{original.get('transformers', '?')}, matmul rate {original.get('matmul_gflops', '?')} GFLOP/s on that "
        f"run; its LSG-floor fractions use that rate). {ratios}",
        "",
    ]
    size_name = results["meta"]["size_name"]
    if size_name != "base":
        note = f"No comparison: this run used model size `{size_name}`, the original's figures are at base size."
        return lines + [note, ""]
    if not comparison:
        return lines + ["No setting was measured by both.", ""]
    return lines + comparison_table(comparison) + [""]


def plotted_rows(results: dict) -> list[dict]:
    """This run's rows, and the file's figures of the original unless this run measured the original itself."""
    if results["original"] and not measured_original(results["rows"]):
        return results["rows"] + results["original"]["rows"]
    return results["rows"]


def write_markdown(results: dict, path: Path) -> None:
    """results.md: header, one table per mode (with the original's rows), bf16 and original comparisons."""
    rows = results["rows"] + (results["original"]["rows"] if results["original"] else [])
    lines = markdown_header(results)
    titles = {"infer": "Inference (encoder forward)", "train": "Training step (encoder forward + backward)"}
    for mode in MODES:
        if any(row["mode"] == mode for row in rows):
            lines += [f"## {titles[mode]}", ""] + markdown_results(rows, mode) + [""]
    lines += markdown_bf16(results["comparisons"]["bf16"])
    lines += markdown_original(results)
    lines.append("Plot: `results.png` (time and extra memory against length, log-log).")
    path.write_text("\n".join(lines) + "\n")


def series(rows, mode: str) -> dict:
    """Successful rows of one mode grouped by line label, sorted by length."""
    grouped = {}
    for row in rows:
        if row["mode"] == mode and row.get("status") == "ok":
            label = f"{row['impl']} {row['setting']}".strip()
            grouped.setdefault(label, []).append(row)
    return {label: sorted(points, key=lambda r: r["length"]) for label, points in grouped.items()}


def line_style(points) -> dict:
    """The original dashed with squares (open: the file's), this project's LSG solid, the peers dash-dotted."""
    if points[0]["key"] == "original":
        return {"linestyle": "--", "marker": "s", "markerfacecolor": "none"}
    if points[0]["key"] == ORIGINAL_IMPL.key:
        return {"linestyle": "--", "marker": "s"}
    return {"linestyle": "-" if points[0]["impl"].startswith("lsg") else "-.", "marker": "o"}


def color_key(points) -> str:
    """Rows of the original share the colour of this project's LSG rows with the same setting."""
    impl = "lsg" if points[0]["key"] in ("original", ORIGINAL_IMPL.key) else points[0]["impl"]
    return f"{impl} {points[0]['setting']}"


def plot_mode(time_ax, mem_ax, rows, mode: str, colors: dict, floor: dict) -> None:
    """Time and memory panels of one mode."""
    lengths = set()
    for label, points in series(rows, mode).items():
        xs = [p["length"] for p in points]
        lengths.update(xs)
        kwargs = {"color": colors[color_key(points)], "label": label, **line_style(points)}
        time_ax.plot(xs, [p["median_s"] for p in points], **kwargs)
        mem_ax.plot(xs, [max(p["extra_mb"], 1.0) for p in points], **kwargs)
    if mode == "infer" and floor:
        xs = sorted(int(length) for length in floor)
        time_ax.plot(xs, [floor[str(x)]["seconds"] for x in xs], color="black", linestyle=":",
                     label="LSG floor (FLOPs at the fp32 matmul rate)")
    for ax, ylabel in ((time_ax, "median time (s)"), (mem_ax, "extra memory (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        if lengths:
            ax.set_xticks(sorted(lengths), [f"{x:,}" for x in sorted(lengths)])
        ax.set_xlabel("tokens")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{mode}: {ylabel}")
        ax.grid(True, which="both", alpha=0.3)
    mem_ax.legend(*time_ax.get_legend_handles_labels(), fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))


def write_plot(results: dict, path: Path) -> None:
    """results.png: time (left) and extra memory (right) against length, log-log, one row of panels per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = plotted_rows(results)
    modes = [mode for mode in MODES if any(row["mode"] == mode for row in rows)] or ["infer"]
    fig, axes = plt.subplots(len(modes), 2, figsize=(15, 5.5 * len(modes)), squeeze=False)
    keys = sorted({color_key(points) for mode in modes for points in series(rows, mode).values()})
    colors = {key: plt.get_cmap("tab20")(i % 20) for i, key in enumerate(keys)}
    for (time_ax, mem_ax), mode in zip(axes, modes):
        plot_mode(time_ax, mem_ax, rows, mode, colors, results.get("floor") or {})
    meta = results["meta"]
    fig.suptitle(f"lsg-bart benchmark, {meta['date']} (CPU, {meta['threads']} threads, model size {meta['size_name']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


def parse_list(text: str) -> list[str]:
    """Comma-separated values."""
    return [part.strip() for part in text.split(",") if part.strip()]


def default_max_mem_gb() -> float:
    """18 GB, or 75% of the machine's memory when that is less."""
    try:
        total_kb = int(next(line for line in open("/proc/meminfo") if line.startswith("MemTotal")).split()[1])
        return round(min(18.0, 0.75 * total_kb / 1024**2), 1)
    except (OSError, StopIteration, ValueError):
        return 18.0


def parse_args(argv=None) -> argparse.Namespace:
    keys = ", ".join(IMPLS_BY_KEY)
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Each setting runs in a fresh subprocess; results go to "
        "results.json, results.md and results.png in --out-dir.",
        epilog=f"Implementations: {keys}. Default grid: all of them at 1024/4096/8192/16384 tokens in inference "
        "(lsg_original only with --original-python); lsg_norm, bart_sdpa, bart_eager, led_w256, led_w1024, bigbird "
        "and lsg_original also in training (with --impls, every listed one in every mode). Each setting: encoder "
        "only, batch 1, random weights, one warm-up then the median of --repeats runs; extra MB = peak RSS growth "
        "over the built model; train = forward + backward of mean(hidden states), dropout 0.1. Settings whose "
        "estimated memory exceeds --max-mem-gb are skipped with a note (e.g. bart_eager at 16384 tokens). The "
        "fp32/bf16 matmul rate and the LSG floor (FLOPs of the LSG encoder at that rate) are printed first. See "
        "docs/benchmark.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)), help="comma-separated token counts")
    parser.add_argument("--impls", default=None, help="comma-separated implementation keys; the default grid "
                        "when omitted")
    parser.add_argument("--modes", default="infer,train", help="comma-separated: infer, train")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up")
    parser.add_argument("--slow-s", type=float, default=10.0, help="use at most 2 runs when the warm-up is slower")
    parser.add_argument("--out-dir", default=str(DEFAULT_OUT_DIR), help="where results.{json,md,png} go")
    parser.add_argument("--original", default=None,
                        help="JSON file with the original implementation's figures, measured another day; listed "
                        "in the tables, and compared and plotted unless --original-python measures the original")
    parser.add_argument("--original-python", default=None, metavar="PATH",
                        help="a Python interpreter whose environment has lsg-converter 0.1.9 and transformers "
                        "4.38.x, e.g. orig/bin/python after `python -m venv orig && orig/bin/pip install torch "
                        "transformers==4.38.2 lsg-converter==0.1.9`; it runs the original implementation "
                        "(lsg_original, added to the default grids) in the same run, for speed-ups measured together")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per setting")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per-setting time limit in seconds")
    parser.add_argument("--max-mem-gb", type=float, default=default_max_mem_gb(),
                        help="skip settings whose estimated extra memory is larger")
    parser.add_argument("--size", choices=sorted(MODEL_SIZES), default="base", help="encoder size")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs")
    parser.add_argument("--quick", action="store_true",
                        help="smoke grid: tiny model, 1024 tokens, lsg_norm/lsg_bf16/bart_sdpa (and lsg_original "
                        "with --original-python) in inference and lsg_norm in training, 1 run")
    parser.add_argument("--from-json", default=None, help="only rewrite the markdown and plot from a results.json")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.repeats = "tiny", 1
        if args.lengths == parser.get_default("lengths"):
            args.lengths = "1024"
    try:
        args.lengths = [int(length) for length in parse_list(args.lengths)]
    except ValueError:
        parser.error(f"--lengths must be comma-separated integers, got {args.lengths!r}")
    args.modes = parse_list(args.modes)
    if not set(args.modes) <= set(MODES):
        parser.error(f"--modes must be among {', '.join(MODES)}")
    return args


def machine_meta(args) -> dict:
    """Date, CPU, versions and run parameters."""
    import importlib.metadata as metadata

    cpu = cpu_description()
    return {
        "date": datetime.date.today().isoformat(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": metadata.version("torch"),
        "transformers": metadata.version("transformers"),
        "threads": args.threads,
        "repeats": args.repeats,
        "slow_s": args.slow_s,
        "size_name": args.size,
        "size": MODEL_SIZES[args.size],
        "dropout": DROPOUT,
        "main_lsg": MAIN_LSG,
        "max_mem_gb": args.max_mem_gb,
        "timeout_s": args.timeout,
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "load_average_start": os.getloadavg()[0],
    }


def write_reports(results: dict, out_dir: Path) -> None:
    """results.md and results.png next to results.json."""
    write_markdown(results, out_dir / "results.md")
    write_plot(results, out_dir / "results.png")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker, measure_setting)
        return
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        original = load_original(args.original) if args.original else results.get("original")
        write_reports(finalize(results, original), out_dir)
        print(f"wrote {out_dir / 'results.md'} and {out_dir / 'results.png'}")
        return

    size = MODEL_SIZES[args.size]
    impls = select_impls(args.impls, args.quick, args.original_python)
    train_keys = training_keys(impls, explicit_impls=args.impls is not None, quick=args.quick)
    plan = plan_grid(impls, args.modes, args.lengths, train_keys)
    results = {"meta": machine_meta(args), "rows": []}
    if args.original_python:
        original_python = results["meta"]["original_python"] = check_original_python(args.original_python)
        print(f"lsg_original: lsg-converter {original_python['lsg-converter']} on transformers "
              f"{original_python['transformers']}, run by {args.original_python}", flush=True)
    json_path = out_dir / "results.json"

    def save(partial):
        json_path.write_text(json.dumps(partial, indent=1))

    print(f"{len(plan)} settings, {args.threads} threads, model size {args.size}; results in {out_dir}", flush=True)
    if os.getloadavg()[0] > 0.5:
        print(f"warning: load average {os.getloadavg()[0]:.1f}; other processes will disturb the timings", flush=True)
    limits = results["limits"] = machine_limits(args.threads, args.quick, args.timeout)
    results["matmul"] = limits["matmul"]
    results["floor"] = floor_table(args.lengths, size, limits["fp32_gflops"])
    print(limits_sentence(limits), flush=True)
    for length, entry in results["floor"].items():
        print(f"LSG floor at {length} tokens: {entry['gflop']:.3g} GFLOP = {entry['seconds']:.3g} s", flush=True)

    start = time.perf_counter()
    run_grid(plan, args, size, results, save)
    results["meta"]["elapsed_s"] = time.perf_counter() - start
    finalize(results, load_original(args.original))
    save(results)
    write_reports(results, out_dir)
    print(f"done in {results['meta']['elapsed_s']:.0f} s; wrote {json_path}, results.md and results.png", flush=True)


if __name__ == "__main__":
    main()
