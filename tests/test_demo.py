"""The demo (issue 3, point 7): offline, a small BART converted to LSG-BART runs an 8,000+ token input."""

import json
import os
import re
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from lsg_bart.demo import DEFAULT_LSG_KWARGS, main, run_demo

PARITY = Path(__file__).parent / "fixtures" / "parity"
STEP_TIME = re.compile(r"^      .*\((\d+\.\d\d) s\)$", re.MULTILINE)


def test_default_command_runs_offline_quietly_and_cleans_up(tmp_path):
    """The README's first command, with no arguments: tiny BART -> LSG-BART 16384 -> 10,000 tokens, with nothing on
    standard error (after the dev install too: no warnings, progress bars or library noise)."""
    script = Path(sys.executable).parent / "lsg-bart-demo"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "lsg_bart.demo"]
    env = dict(os.environ, TMPDIR=str(tmp_path), HF_HUB_OFFLINE="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == "", f"the demo printed on standard error:\n{result.stderr}"
    out = result.stdout
    for step in range(1, 7):
        assert f"[{step}/6]" in out
    assert "Build a tiny random BART" in out
    assert "Convert it to LSG-BART with 16384 positions" in out
    assert "-> 10,000 tokens" in out
    assert "encoder output (1, 10001, 32)" in out and "finite: True" in out
    assert "generate on 10,000 tokens (num_beams=2" in out
    assert len(STEP_TIME.findall(out)) == 6  # every step says how long it took
    assert re.search(r"Done in \d+\.\d s", out)
    assert list(tmp_path.iterdir()) == []  # the temporary checkpoints are removed


def test_demo_with_a_given_model_and_output_dir(tmp_path, capsys):
    args = Namespace(
        initial_model=str(PARITY / "initial"),
        length=8192,
        input_tokens=8000,
        output_dir=str(tmp_path),
        model_kwargs=json.dumps(dict(DEFAULT_LSG_KWARGS, block_size=64, sparse_block_size=32, num_global_tokens=4)),
        num_beams=2,
        max_new_tokens=4,
        seed=0,
    )
    result = run_demo(args, tmp_path)
    assert result["num_tokens"] == 8000
    assert result["encoder_shape"] == (1, 4 + 8000, 32)
    assert 1 < result["generated"].shape[1] <= 1 + 4
    # Each step's duration, as measured and as printed, and the total printed at the end.
    steps = ["Use the given BART checkpoint", "Convert it to LSG-BART with 8192 positions",
             "Load the converted checkpoint with AutoTokenizer / AutoModelForSeq2SeqLM",
             "Tokenize a long text (8,000 tokens)", "Run the encoder on 8,000 tokens",
             "generate on 8,000 tokens (num_beams=2, max_new_tokens=4)"]
    timings = result["timings"]
    assert list(timings) == steps and all(seconds > 0 for seconds in timings.values())
    out = capsys.readouterr().out
    titles = [f"[{number}/6] {step} ..." for number, step in enumerate(steps, 1)]
    assert re.findall(r"^\[\d/6\] .*$", out, re.MULTILINE) == titles
    assert STEP_TIME.findall(out) == [f"{timings[step]:.2f}" for step in steps]
    assert f"Done in {sum(timings.values()):.1f} s" in out

    converted = tmp_path / "lsg-bart-8192"
    assert result["converted"] == converted
    config = json.loads((converted / "config.json").read_text())
    assert config["max_position_embeddings"] == 8192 and config["block_size"] == 64
    assert (converted / "modeling_lsg_bart.py").exists() and (converted / "README.md").exists()

    # Run again into the same folder (the demo replaces its own checkpoint), through main().
    assert main(["--initial_model", str(PARITY / "initial"), "--output_dir", str(tmp_path), "--length", "8192",
                 "--input_tokens", "8000", "--max_new_tokens", "2"]) == 0
    assert "8,000 tokens" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lsg-bart-8192"]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--input_tokens", "20000"], "above --length"),
        (["--length", "0"], "must be positive"),
        (["--model_kwargs", '{"sparsity_type": "fancy"}', "--length", "512", "--input_tokens", "100"],
         "invalid LSG settings"),
    ],
)
def test_demo_rejects_bad_options(arguments, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--output_dir", str(tmp_path), *arguments])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
