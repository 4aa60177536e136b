"""The benchmark script: its smoke grid end to end, and its planning and FLOP arithmetic."""

import importlib.util
import json
import re
import statistics
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "run_benchmark.py"
ORIGINAL = ROOT / "benchmarks" / "anchors_original.json"


def load_benchmark_module():
    spec = importlib.util.spec_from_file_location("run_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = load_benchmark_module()
import core  # noqa: E402  (benchmarks/core.py: run_benchmark put benchmarks/ on the path)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """Run the --quick grid's two inference settings of LSG (fp32 and bf16, for their comparison) once, with the
    original's figures, into a temporary directory. Each setting is a subprocess that imports transformers (~5 s):
    the grid's other settings are measured in this process by `test_worker_measures_training_and_a_peer`."""
    out_dir = tmp_path_factory.mktemp("bench")
    command = [sys.executable, str(SCRIPT), "--quick", "--impls", "lsg_norm,lsg_bf16", "--modes", "infer",
               "--out-dir", str(out_dir), "--original", str(ORIGINAL)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out_dir, proc


def test_quick_run_reports_each_implementation_and_the_bf16_comparison(quick_run):
    """What the benchmark is for: a row for each requested implementation, its figures derived from its own timings
    (median, tokens/s, memory, the share of the LSG floor), and bf16 compared with float32 in the same run."""
    out_dir, _ = quick_run
    results = json.loads((out_dir / "results.json").read_text())
    measured = {(row["key"], row["mode"], row["length"]): row for row in results["rows"]}
    assert set(measured) == {("lsg_norm", "infer", 1024), ("lsg_bf16", "infer", 1024)}
    fp32, bf16 = measured[("lsg_norm", "infer", 1024)], measured[("lsg_bf16", "infer", 1024)]
    for row, impl, dtype in ((fp32, "lsg", "float32"), (bf16, "lsg_bf16", "bfloat16")):
        assert row["status"] == "ok", row
        assert (row["impl"], row["setting"], row["dtype"]) == (impl, "norm b128 s128 f2", dtype)
        assert len(row["times_s"]) == results["meta"]["repeats"] == 1  # --quick: one timed run after the warm-up
        assert row["median_s"] == statistics.median(row["times_s"])
        assert row["tokens_per_s"] == pytest.approx(1024 / row["median_s"])
        assert row["extra_mb"] == pytest.approx(row["peak_mb"] - row["baseline_mb"])

    # The LSG floor: the FLOPs of the tiny encoder at the measured float32 matmul rate, against float32 rows only.
    matmul = results["matmul"]
    for dtype in ("float32", "bfloat16"):
        assert set(matmul[dtype]["shapes"]) >= {"matmul 512x256x256", "matmul 256x256x256"}
        assert matmul[dtype]["best"] == max(matmul[dtype]["shapes"].values())
    floor_s = bench.lsg_floor_flops(1024, results["meta"]["size"]) / (matmul["float32"]["best"] * 1e9)
    assert results["floor"]["1024"]["seconds"] == pytest.approx(floor_s)
    assert fp32["floor_fraction"] == pytest.approx(floor_s / fp32["median_s"])
    assert "floor_fraction" not in bf16

    (comparison,) = results["comparisons"]["bf16"]
    assert (comparison["fp32_s"], comparison["bf16_s"]) == (fp32["median_s"], bf16["median_s"])
    assert comparison["speedup"] == pytest.approx(fp32["median_s"] / bf16["median_s"])
    assert (comparison["fp32_extra_mb"], comparison["bf16_extra_mb"]) == (fp32["extra_mb"], bf16["extra_mb"])
    assert all(comparison[name] == bf16[name] for name in ("max_abs_err", "rel_max_err", "rel_l2_err"))
    assert comparison["rel_l2_err"] < 0.1  # bf16 keeps about 3 significant digits
    assert results["original"]["label"] == "original (from file, measured 2026-11-24)"
    assert len(results["original"]["rows"]) == 13
    assert results["comparisons"]["original"] == []  # the original's figures are at base size, --quick is tiny


def test_quick_run_writes_markdown_and_png(quick_run):
    out_dir, proc = quick_run
    markdown = (out_dir / "results.md").read_text()
    for expected in [
        "| lsg | norm b128 s128 f2 | infer | 1024 |",
        "| lsg_bf16 | norm b128 s128 f2 | infer | 1024 |",
        "| original (from file, measured 2026-11-24) | norm b128 s128 f2 | infer | 16384 | 17.81 |",
        "## bf16 vs fp32",
        "## lsg-bart vs the original implementation",
        "No comparison: this run used model size `tiny`",
        "Matmul rate fp32:",
        "Copy bandwidth:",
    ]:
        assert expected in markdown
    assert (out_dir / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out_dir / "results.json").read_text())
    assert core.limits_sentence(results["limits"]) in proc.stdout and "LSG floor" in proc.stdout


def test_quick_grid_plan():
    impls = bench.select_impls(None, quick=True, original_python=None)
    train_keys = bench.training_keys(impls, explicit_impls=False, quick=True)
    plan = bench.plan_grid(impls, list(bench.MODES), [1024], train_keys)
    assert [(impl.key, mode) for impl, mode, _ in plan] == [
        ("lsg_norm", "infer"), ("lsg_bf16", "infer"), ("bart_sdpa", "infer"), ("lsg_norm", "train")
    ]


@pytest.mark.parametrize("key, mode", [("lsg_norm", "train"), ("bart_sdpa", "infer")])
def test_worker_measures_training_and_a_peer(key, mode):
    """What a --quick subprocess measures for the settings the fixture's run leaves out, here in this process."""
    threads = torch.get_num_threads()
    task = {"key": key, "mode": mode, "length": 1024, "size": bench.MODEL_SIZES["tiny"], "seed": 0, "threads": 2,
            "repeats": 2, "slow_s": 60.0}
    try:
        row = bench.measure_setting(task)
    finally:
        torch.set_num_threads(threads)
    assert len(row["times_s"]) == 2  # the repeats asked for (the warm-up is not one of them)
    assert row["median_s"] == statistics.median(row["times_s"])
    assert row["peak_mb"] >= row["baseline_mb"] and row["extra_mb"] == row["peak_mb"] - row["baseline_mb"]
    assert row["memory_method"] in ("VmHWM reset after build", "lifetime VmHWM (reset not allowed)")


def test_reports_can_be_rewritten_from_json(quick_run, tmp_path):
    out_dir, _ = quick_run
    bench.main(["--from-json", str(out_dir / "results.json"), "--out-dir", str(tmp_path)])
    assert "| lsg | norm b128 s128 f2 | infer | 1024 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.png").exists()


def test_lsg_floor_matches_the_anchors():
    base = bench.MODEL_SIZES["base"]
    assert bench.lsg_keys_per_query(bench.MAIN_LSG) == 641
    gflop = {length: bench.lsg_floor_flops(length, base) / 1e9 for length in bench.LENGTHS}
    assert [round(gflop[length]) for length in bench.LENGTHS] == [99, 396, 793, 1585]


def test_default_grid_and_memory_skips():
    args = Namespace(max_mem_gb=18.0)
    base = bench.MODEL_SIZES["base"]
    train_keys = bench.training_keys(bench.IMPLS, explicit_impls=False, quick=False)
    plan = bench.plan_grid(bench.IMPLS, ["infer", "train"], list(bench.LENGTHS), train_keys)
    trained = {impl.key for impl, mode, _ in plan if mode == "train"}
    assert trained == {"lsg_norm", "bart_sdpa", "bart_eager", "led_w256", "led_w1024", "bigbird"}
    inferred = {impl.key for impl, mode, _ in plan if mode == "infer"}
    assert inferred == {impl.key for impl in bench.IMPLS}  # lsg_original needs --original-python

    eager = bench.IMPLS_BY_KEY["bart_eager"]
    assert bench.skip_reason(eager, "infer", 8192, args, base, {}) is None
    assert "skipped: estimated" in bench.skip_reason(eager, "infer", 16384, args, base, {})
    lsg = bench.IMPLS_BY_KEY["lsg_norm"]
    assert bench.skip_reason(lsg, "train", 16384, args, base, {}) is None
    failed = {("lsg_norm", "train"): "timeout"}
    assert "shorter length" in bench.skip_reason(lsg, "train", 16384, args, base, failed)


def test_original_python_is_checked_before_the_run(tmp_path):
    missing = tmp_path / "no-such-python"
    with pytest.raises(SystemExit, match=re.escape(f"--original-python {missing}: cannot run this interpreter")):
        bench.main(["--quick", "--original-python", str(missing), "--out-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="lsg_original runs in another interpreter"):
        bench.main(["--quick", "--impls", "lsg_original", "--out-dir", str(tmp_path)])
    assert not (tmp_path / "results.json").exists()


def test_original_figures_and_comparison():
    original = bench.load_original(str(ORIGINAL))
    first = original["rows"][0]
    assert (first["setting"], first["mode"], first["length"]) == ("norm b128 s128 f2", "infer", 1024)
    assert first["median_s"] == 0.62 and first["extra_mb"] == 88
    assert round(first["floor_fraction"], 2) == 0.77  # as in the anchors: 0.48 s floor / 0.62 s
    ours = [
        {**first, "key": "lsg_norm", "impl": "lsg", "source": "this run", "median_s": 0.31, "extra_mb": 44},
        {**first, "key": "bart_sdpa", "impl": "bart_sdpa", "setting": "", "median_s": 0.1},
    ]
    (comparison,) = bench.original_comparison(ours, original, "base")
    assert comparison["speedup"] == pytest.approx(2.0) and comparison["memory_ratio"] == pytest.approx(2.0)
    assert bench.original_comparison(ours, original, "tiny") == []


def test_cpu_description_names_instruction_limits(monkeypatch):
    for name in core.ISA_LIMITS:
        monkeypatch.delenv(name, raising=False)
    plain = core.cpu_description()
    assert "limited by" not in plain
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert core.cpu_description() == plain + ", limited by ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2"


def test_machine_limits_are_measured_in_a_fresh_process_and_stated_in_one_sentence():
    limits = core.machine_limits(threads=1, quick=True)
    assert limits["threads"] == 1 and limits["cpu"] == core.cpu_description()
    assert limits["fp32_gflops"] == max(limits["matmul"]["float32"]["shapes"].values()) > 0
    assert limits["bf16_gflops"] == max(limits["matmul"]["bfloat16"]["shapes"].values()) > 0
    assert limits["copy_gb_s"] > 0
    sentence = core.limits_sentence(limits)
    for figure in (f"fp32 {limits['fp32_gflops']:.0f} GFLOP/s", f"bf16 {limits['bf16_gflops']:.0f} GFLOP/s",
                   f"copy bandwidth {limits['copy_gb_s']:.1f} GB/s", limits["cpu"]):  # fmt: skip
        assert figure in sentence


def test_a_failing_or_slow_worker_gives_a_status_and_a_note(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text("import sys, time\nif '--slow' in open(sys.argv[2]).read(): time.sleep(30)\n"
                      "raise ValueError('no such setting')\n")  # fmt: skip
    failed = core.run_in_subprocess({"threads": 1}, timeout=60, script=str(script))
    assert failed == {"status": "error", "note": "error: ValueError: no such setting"}
    slow = core.run_in_subprocess({"threads": 1, "mode": "--slow"}, timeout=1, script=str(script))
    assert slow["status"] == "timeout"
