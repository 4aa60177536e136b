#!/usr/bin/env python3
"""Time a speed change: two versions of the package, run in turn in one session (before, after, before, after, ...),
so that a machine whose speed drifts during the run moves both alike.

Each round runs benchmarks/step_account.py (a decoding step, part by part) once with each version, each in fresh
processes, the package imported from that version's tree (a git worktree of the commit, or this checkout for the
working tree). Reported: the median over rounds of each part's time per step, for each version, and their ratio.

  python benchmarks/before_after.py                         # HEAD against the working tree, 3 rounds
  python benchmarks/before_after.py --before 0498c6b --after HEAD --rounds 5 --precisions fp32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from core import limits_sentence, write_results  # noqa: E402

WORKING_TREE = "working-tree"


def checkout(revision: str, workdir: Path) -> Path:
    """The source tree of `revision`: this checkout for the working tree, else a detached git worktree of it."""
    if revision == WORKING_TREE:
        return REPO
    tree = workdir / revision.replace("/", "_")
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree), revision], check=True)
    return tree


def run_step_account(tree: Path, out_dir: Path, args) -> dict:
    """benchmarks/step_account.py of this checkout, with `tree`'s package first on the path; its JSON result."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])}
    # Run from the tree itself: Python puts the current directory first on the path.
    imported = subprocess.run([sys.executable, "-c", "import lsg_bart; print(lsg_bart.__file__)"], env=env, cwd=tree,
                              check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    if not Path(imported).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"lsg_bart came from {imported}, not from {tree}")
    command = [sys.executable, str(REPO / "benchmarks" / "step_account.py"), "--precisions", args.precisions,
               "--size", args.size, "--length", str(args.length), "--beams", str(args.beams), "--steps",
               str(args.steps), "--out-dir", str(out_dir)]  # fmt: skip
    subprocess.run(command, env=env, cwd=tree, check=True, capture_output=True, text=True)
    return json.loads((out_dir / "step_account.json").read_text())


# What step_account.py times once per input, before the steps: table row -> its field.
ONCE_PER_INPUT = {"encoder (once per input)": "encoder_s", "keys and values (once per input)": "keys_and_values_s"}


def summarize(runs: dict) -> list[dict]:
    """Median seconds per part (and per whole step) over the rounds, per version and precision, with the ratio."""
    rows = []
    first = runs["before"][0]
    for index, row in enumerate(first["rows"]):
        parts = ["step"] + [part["part"] for part in row["parts"]] + list(ONCE_PER_INPUT)
        for part in parts:

            def median(side):
                values = []
                for result in runs[side]:
                    measured = result["rows"][index]
                    if part == "step":
                        values.append(measured["step_s"])
                    elif part in ONCE_PER_INPUT:
                        values.append(measured[ONCE_PER_INPUT[part]])
                    else:
                        values.append(next(p["seconds"] for p in measured["parts"] if p["part"] == part))
                return statistics.median(values)

            before, after = median("before"), median("after")
            rows.append(dict(precision=row["precision"], part=part, before_ms=before * 1e3, after_ms=after * 1e3,
                             after_over_before=after / before))  # fmt: skip
    return rows


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [
        f"# Before/after: {meta['before']} -> {meta['after']}",
        "",
        f"`{meta['command']}`: {meta['rounds']} rounds, alternating; step_account settings {meta['settings']}; "
        f"{limits_sentence(meta['limits'])} (once, in the first run); copy bandwidth beside each run "
        f"{meta['bandwidth']}.",
        "",
        "| precision | part | before ms | after ms | after / before |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['precision']} | {r['part']} | {r['before_ms']:.2f} | {r['after_ms']:.2f} | "
              f"{r['after_over_before']:.2f} |" for r in rows]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    parser.add_argument("--before", default="HEAD", help="a git revision")
    parser.add_argument("--after", default=WORKING_TREE, help=f"a git revision, or {WORKING_TREE!r}")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each version, alternating")
    parser.add_argument("--precisions", default="fp32,int8", help="step_account.py --precisions")
    parser.add_argument("--size", default="base", help="step_account.py --size")
    parser.add_argument("--length", type=int, default=4096, help="step_account.py --length")
    parser.add_argument("--beams", type=int, default=4, help="step_account.py --beams")
    parser.add_argument("--steps", type=int, default=32, help="step_account.py --steps")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results" / "before_after")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be a positive integer, got {args.rounds}")
    runs = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="lsg-before-after-") as workdir:
        trees = {side: checkout(getattr(args, side), Path(workdir)) for side in runs}
        try:
            for round_index in range(args.rounds):
                for side in runs:
                    out = Path(workdir) / "out" / f"{side}-{round_index}"
                    runs[side].append(run_step_account(trees[side], out, args))
                    print(f"round {round_index + 1}, {side}: " + ", ".join(
                        f"{row['precision']} {row['step_s'] * 1e3:.1f} ms" for row in runs[side][-1]["rows"]),
                        flush=True)  # fmt: skip
        finally:
            for tree in trees.values():
                if tree != REPO:
                    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    first = runs["before"][0]
    bandwidths = [row["bandwidth_gb_s"] for side in runs.values() for result in side for row in result["rows"]]
    meta = dict(before=args.before, after=args.after, rounds=args.rounds, limits=first["meta"]["limits"],
                command=" ".join(["python benchmarks/before_after.py", *(argv if argv is not None else sys.argv[1:])]),
                settings=f"{args.size}, {args.length} tokens, {args.beams} beams, {args.steps} steps",
                bandwidth=f"{min(bandwidths):.1f}-{max(bandwidths):.1f} GB/s")  # fmt: skip
    rows = summarize(runs)
    write_results(args.out_dir, "results", dict(meta=meta, rows=rows, runs=runs), markdown(meta, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
