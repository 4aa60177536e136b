"""The end-to-end summarisation benchmark (`benchmarks/generate_benchmark.py`) and the int8 agreement benchmark
(`benchmarks/int8_agreement.py`): each smoke run reports every implementation it was asked for, the comparisons
against float32 lsg and the agreement of the int8 outputs with float32."""

import importlib.util
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import padded_batch, tiny_config

from lsg_bart import LSGBartForConditionalGeneration

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
    # Each agreement is what the two outputs give, token by token (after the decoder start token).
    [fp32] = rows["lsg"]["output_ids"]
    for name in ("lsg_int8", "lsg_compiled"):
        [ours] = rows[name]["output_ids"]
        assert len(ours) == len(fp32) == 9 and ours[0] == fp32[0]
        same = sum(a == b for a, b in zip(ours[1:], fp32[1:]))
        assert agreement[name]["identical_tokens"] == same / 8
        assert (agreement[name]["rougeL"] == 1.0) == (ours == fp32)
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
        assert row["exact_match"] in (0, 1 / 3, 2 / 3, 1)  # of 3 documents
    assert results["steps"] == 2 and results["documents"] == 3
    assert "| torch.ao dynamic int8 |" in (tmp_path / "results.md").read_text()


def test_int8_agreement_measures():
    """`int8_agreement.compare` on outputs whose agreement is known: float32 against itself, and one output that
    leaves float32's after its first token."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from int8_agreement import compare
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    fp32 = [[90, 91, 92, 2], [93, 94, 95, 2]]
    references = [[90, 91, 92], [93, 94, 96]]
    assert compare(fp32, fp32, references) == {"identical_tokens": 1.0, "rougeL_vs_fp32": 1.0, "exact_match": 0.5}
    int8 = [[90, 91, 92, 2], [93, 96, 2, 1]]  # the second: 1 of 4 tokens the same; ROUGE-L of 93 96 vs 93 94 95: 0.4
    assert compare(int8, fp32, references) == pytest.approx(
        {"identical_tokens": 5 / 8, "rougeL_vs_fp32": (1 + 0.4) / 2, "exact_match": 0.5}
    )


def test_the_documented_int8_recipe_runs_without_deprecation_warnings():
    """docs/performance.md's int8 code as written, on a tiny model: every linear layer becomes int8, `generate` runs
    on the result, and no deprecation warning is shown (torch.ao's are filtered by the recipe itself)."""
    section = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8").split("\n## int8 on CPU\n", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    model = LSGBartForConditionalGeneration(tiny_config(dropout=0.0, attention_dropout=0.0)).eval()
    linear_layers = sum(isinstance(module, torch.nn.Linear) for module in model.modules())
    input_ids, attention_mask = padded_batch([150])
    namespace = {"model": model, "inputs": {"input_ids": input_ids, "attention_mask": attention_mask}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.inference_mode():
            exec(compile(code, "docs/performance.md", "exec"), namespace)
    assert not [str(w.message) for w in caught if "deprecat" in str(w.message).lower()]
    quantized = namespace["model"]
    int8_layers = sum(isinstance(module, torch.ao.nn.quantized.dynamic.Linear) for module in quantized.modules())
    assert int8_layers == linear_layers and not any(type(m) is torch.nn.Linear for m in quantized.modules())
    assert namespace["summary_ids"].shape[0] == 1 and namespace["summary_ids"].shape[1] > 1


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao is not installed (not in the dev extra)")
def test_int8_forms_reports_each_form_against_float32(tmp_path):
    run("int8_forms.py", "--size", "tiny", "--rounds", "1", "--length", "256", "--new-tokens", "2",
        "--out-dir", str(tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {row["form"]: row for row in results["rows"]}
    assert list(rows) == ["float32", "torch.ao dynamic", "torchao weight-only", "torchao dynamic"]
    assert rows["float32"]["encoder_rel_l2"] == 0.0
    for form in list(rows)[1:]:  # int8 rounding moves the encoder output, by about 1e-3 on this model
        assert 0.0 < rows[form]["encoder_rel_l2"] < 0.05, form
    assert all(row["encoder_s"] > 0 and row["generate_s"] > 0 for row in rows.values())
    assert set(results["rates"]) == {"before", "after"}
