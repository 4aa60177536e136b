"""benchmarks/step_account.py on a tiny model: each part of a decoding step is timed and set against its bytes."""

import json
import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import before_after  # noqa: E402
import step_account  # noqa: E402
from core import limits_sentence  # noqa: E402


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("step-account")
    command = [sys.executable, str(REPO / "benchmarks" / "step_account.py"), "--quick", "--precisions", "fp32,int8",
               "--threads", "1", "--out-dir", str(out)]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    return json.loads((out / "step_account.json").read_text()), (out / "step_account.md").read_text()


def test_every_part_of_the_step_is_accounted_for(results):
    data, table = results
    assert [row["precision"] for row in data["rows"]] == ["fp32", "int8"]
    limits = data["meta"]["limits"]
    assert limits_sentence(limits) in table
    assert limits["fp32_gflops"] > 0 and limits["bf16_gflops"] > 0 and limits["copy_gb_s"] > 0
    for row in data["rows"]:
        assert [part["part"] for part in row["parts"]] == list(step_account.PARTS)
        assert row["steps"] == data["meta"]["steps"] == row["generated"]
        # The parts split the step: their times add up to the whole step's.
        assert sum(part["seconds"] for part in row["parts"]) == pytest.approx(row["step_s"], rel=1e-6)
        assert f"keys and values, {row['keys_and_values_s'] * 1e3:.0f} ms" in table  # once per input, apart
        assert f"the encoder, {row['encoder_s'] * 1e3:.0f} ms" in table and row["encoder_s"] > 0
        for part in row["parts"]:
            assert part["floor_s"] == pytest.approx(part["bytes"] / (row["bandwidth_gb_s"] * 1e9))
            assert f"| {part['part']} | {part['seconds'] * 1e3:.2f} |" in table


def test_bytes_follow_the_model_and_the_precision(results):
    data, _ = results
    fp32, int8 = ({part["part"]: part["bytes"] for part in row["parts"]} for row in data["rows"])
    size, meta = step_account.SIZES["tiny"], data["meta"]
    d, layers = size["d_model"], size["layers"]
    # The cross-attention reads each layer's keys and values once per input (float32 in both: the int8 model
    # quantises weights only), plus its query and output projections.
    keys_and_values = layers * 2 * meta["batch"] * (meta["length"] + 1) * d * 4
    projections = layers * 2 * (d * d + d)
    assert fp32["cross-attention"] == keys_and_values + projections * 4
    assert int8["cross-attention"] == keys_and_values + layers * 2 * (d * d + 4 * d)  # int8 weights, float biases
    assert fp32["LM head"] == (size["vocab_size"] * d + size["vocab_size"]) * 4
    assert fp32["feed-forward"] == layers * (2 * d * size["ffn"] + size["ffn"] + d) * 4


def test_before_after_times_two_versions_in_turn_and_reports_their_ratio(tmp_path):
    out = tmp_path / "before-after"
    command = [sys.executable, str(REPO / "benchmarks" / "before_after.py"), "--before", "HEAD", "--rounds", "2",
               "--precisions", "fp32", "--size", "tiny", "--length", "256", "--steps", "3", "--out-dir", str(out)]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert [len(results["runs"][side]) for side in ("before", "after")] == [2, 2]
    once = before_after.ONCE_PER_INPUT
    assert [row["part"] for row in results["rows"]] == ["step", *step_account.PARTS, *once]
    for row in results["rows"]:
        for side in ("before", "after"):
            measured = [run["rows"][0]["step_s"] if row["part"] == "step" else
                        run["rows"][0][once[row["part"]]] if row["part"] in once else
                        next(p["seconds"] for p in run["rows"][0]["parts"] if p["part"] == row["part"])
                        for run in results["runs"][side]]  # fmt: skip
            assert row[f"{side}_ms"] == pytest.approx(sum(measured) / 2 * 1e3)  # the median of two
        assert row["after_over_before"] == pytest.approx(row["after_ms"] / row["before_ms"])
    assert "| fp32 | step |" in (out / "results.md").read_text()
