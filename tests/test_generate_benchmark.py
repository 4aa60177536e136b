"""The end-to-end summarisation benchmark (`benchmarks/generate_benchmark.py`) and the int8 agreement benchmark
(`benchmarks/int8_agreement.py`): each smoke run reports every implementation it was asked for, the comparisons
against float32 lsg and the agreement of the int8 outputs with float32."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(script, *args):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_generate_benchmark_reports_int8_and_compiled_against_fp32(tmp_path):
    run("generate_benchmark.py", "--quick", "--impls", "lsg,lsg_int8,lsg_compiled", "--out-dir", str(tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {row["impl"]: row for row in results["rows"]}
    assert set(rows) == {"lsg", "lsg_int8", "lsg_compiled"}
    assert all(row["status"] == "ok" for row in rows.values()), rows
    assert all(row["generated_tokens"] == 8 for row in rows.values())  # --quick forces 8 new tokens
    compared = {c["other"]: c for c in results["comparisons"]}
    assert set(compared) == {"lsg_int8", "lsg_compiled"}
    for name, comparison in compared.items():
        assert comparison["speedup"] == rows[name]["total_s"] / rows["lsg"]["total_s"]
    agreement = {a["impl"]: a for a in results["agreement"]}
    assert set(agreement) == {"lsg_int8", "lsg_compiled"}
    assert agreement["lsg_compiled"]["identical_tokens"] == 1.0  # the same model, compiled: eager's tokens
    assert 0 <= agreement["lsg_int8"]["identical_tokens"] <= 1
    markdown = (tmp_path / "results.md").read_text()
    assert "| lsg_int8 |" in markdown and "| lsg_compiled |" in markdown


def test_int8_agreement_reports_each_int8_form(tmp_path):
    run("int8_agreement.py", "--steps", "2", "--batch", "2", "--documents", "3", "--beams", "1",
        "--out-dir", str(tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    forms = [row["form"] for row in results["rows"]]
    torchao = ["torchao int8 weight-only"] if importlib.util.find_spec("torchao") else []  # not in the dev extra
    assert forms == ["torch.ao dynamic int8", *torchao]
    for row in results["rows"]:
        assert 0 <= row["identical_tokens"] <= 1 and 0 <= row["rougeL_vs_fp32"] <= 1
        assert 0 <= row["exact_match"] <= 1
    assert results["steps"] == 2 and results["documents"] == 3
    assert "| torch.ao dynamic int8 |" in (tmp_path / "results.md").read_text()
