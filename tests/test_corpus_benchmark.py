"""The corpus summarisation benchmark (`benchmarks/summarize_corpus.py`) on a tiny setting: a row for each batch
size, sorted and not, whose figures come from its own timings and from the batches the command forms."""

import importlib.util
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "summarize_corpus.py"


def load_script():
    spec = importlib.util.spec_from_file_location("summarize_corpus", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def widths(lengths, batches):
    """Padded tokens of `batches` (tuples of indices): each batch is as wide as its longest document."""
    return sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)


def test_rows_come_from_the_timings_and_the_batches(tmp_path):
    command = [sys.executable, str(SCRIPT), "--size", "tiny", "--documents", "6", "--words", "20,80",
               "--batch-sizes", "1,2", "--rounds", "2", "--max-new-tokens", "2", "--beams", "1", "--threads", "1",
               "--out-dir", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert [(row["batch_size"], row["sorted"]) for row in results["rows"]] == [(1, False), (1, True), (2, False),
                                                                             (2, True)]  # fmt: skip

    # The corpus: 3 documents of each length, their token counts as the package's tiny tokenizer gives them.
    from lsg_bart.tiny import build_tokenizer

    texts = load_script().make_corpus(6, [20, 80])
    assert sorted(len(text.split()) for text in texts) == [20, 20, 20, 80, 80, 80]
    tokenizer = build_tokenizer(model_max_length=4096)
    lengths = [len(tokenizer(text)["input_ids"]) for text in texts]
    assert results["input_tokens"] == lengths

    baseline = results["rows"][0]["median_s"]
    by_length = sorted(range(6), key=lambda i: -lengths[i])
    batches = {False: [(0, 1), (2, 3), (4, 5)], True: [tuple(by_length[i : i + 2]) for i in (0, 2, 4)]}
    for row in results["rows"]:
        assert len(row["times_s"]) == 2 and row["median_s"] == statistics.median(row["times_s"])
        assert row["docs_per_s"] == pytest.approx(6 / row["median_s"])
        assert row["input_tokens_per_s"] == pytest.approx(sum(lengths) / row["median_s"])
        assert row["speedup_vs_batch_1_unsorted"] == pytest.approx(baseline / row["median_s"])
        if row["batch_size"] == 1:
            assert row["padded_fraction"] == 0
        else:
            expected = 1 - sum(lengths) / widths(lengths, batches[row["sorted"]])
            assert row["padded_fraction"] == pytest.approx(expected)
    unsorted, sorted_ = results["rows"][2]["padded_fraction"], results["rows"][3]["padded_fraction"]
    assert sorted_ <= unsorted  # sorting never pads more
    table = (tmp_path / "results.md").read_text()
    assert "| 2 | yes |" in table and "| 1 | no |" in table and table in proc.stdout
