#!/usr/bin/env python
"""What the benchmarks here share: this machine's limits, a fresh process per setting, and results written out.

- The machine's limits, measured in the same run as the figures they place: the CPU and its vector instructions,
  the best float32 and bfloat16 product rates (GFLOP/s, the FLOP floor of the encoder) and the copy bandwidth
  (GB/s, the byte floor of a decoding step). `machine_limits` measures them in a fresh process;
  `limits_sentence` states them beside a table.
- A fresh process per setting: `run_in_subprocess` runs a task (a JSON-able dict) with `SCRIPT --worker TASK` in a
  new interpreter, which may be another one (the original implementation's); each script's `--worker` calls
  `worker_main` with its own measuring function. A setting's peak memory and warm-up are then its own.
- Results: `write_results` writes a benchmark's JSON and markdown table side by side (plots are drawn by each
  benchmark, from that JSON).

This file is imported by workers running in the original implementation's interpreter: only the standard library
at module level.

  python benchmarks/core.py              # this machine's limits, 2 threads
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Environment variables that make PyTorch, oneDNN and MKL use fewer instructions than the CPU has: set together,
# they run the benchmark as on an older CPU of the same make (e.g. AVX2 only on an AVX-512 machine).
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
# Products whose best rate is the machine's: the encoder's feed-forward shape and a large square one.
MATMUL_SHAPES = ((4096, 768, 768), (4096, 768, 3072), (2048, 2048, 2048))
QUICK_MATMUL_SHAPES = ((512, 256, 256), (256, 256, 256))


def cpu_description() -> str:
    """The CPU's model name, its vector and bf16 instructions, and any instruction limit set for this run."""
    cpu = platform.processor() or platform.machine()
    features = []
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        flags = set(next(line for line in info.splitlines() if line.startswith("flags")).split())
        features = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    except (OSError, StopIteration):
        pass
    limits = [f"{name}={os.environ[name]}" for name in ISA_LIMITS if os.environ.get(name)]
    described = f"{cpu} ({', '.join(features)})" if features else cpu
    return described + (f", limited by {', '.join(limits)}" if limits else "")


def matmul_kernels(dtype) -> dict:
    """The ways to multiply two `dtype` matrices that PyTorch offers: `a @ b` (MKL for float32 on CPU, oneDNN for
    bfloat16) and oneDNN's linear kernel, which lsg-bart uses for float32, where the model's probe finds it works
    in that dtype (oneDNN refuses bfloat16 on CPUs without AVX-512, for one)."""
    from lsg_bart.cpu_linear import find_onednn_linear

    kernels = {"matmul": lambda a, b_t: a @ b_t.t()}
    onednn = find_onednn_linear(dtype)
    if onednn is not None:
        kernels["onednn"] = lambda a, b_t: onednn(a, b_t, None, "none", [], "")
    return kernels


def measure_matmul(task: dict) -> dict:
    """GFLOP/s of `task["shapes"]` with each kernel of `matmul_kernels`, in float32 and bfloat16, and the best."""
    import torch

    torch.set_num_threads(task["threads"])
    rates = {}
    for dtype_name in ("float32", "bfloat16"):
        dtype = getattr(torch, dtype_name)
        per_shape = {}
        for m, k, n in task["shapes"]:
            a, b_t = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)  # a @ b_t.T: (m, n)
            for kernel_name, kernel in matmul_kernels(dtype).items():
                kernel(a, b_t)  # warm-up
                best = float("inf")
                for _ in range(task["repeats"]):
                    start = time.perf_counter()
                    kernel(a, b_t)
                    best = min(best, time.perf_counter() - start)
                per_shape[f"{kernel_name} {m}x{k}x{n}"] = 2 * m * k * n / best / 1e9
        rates[dtype_name] = {"shapes": per_shape, "best": max(per_shape.values())}
    return rates


def copy_bandwidth_gb_s() -> float:
    """Bytes read and written per second by a 256 MB tensor copy (best of 5)."""
    import torch

    source = torch.ones(64 * 2**20)  # 256 MB
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.numel() * 4 / best / 1e9


def measure_limits(task: dict) -> dict:
    """This process's view of the machine: product rates (`measure_matmul`) and copy bandwidth."""
    rates = measure_matmul(task)
    return {
        "cpu": cpu_description(), "threads": task["threads"], "matmul": rates,
        "fp32_gflops": rates["float32"]["best"], "bf16_gflops": rates["bfloat16"]["best"],
        "copy_gb_s": copy_bandwidth_gb_s(),
    }  # fmt: skip


def machine_limits(threads: int, quick: bool = False, timeout: float = 600) -> dict:
    """This machine's limits (`measure_limits`), measured in a fresh process with `threads` threads."""
    task = {"threads": threads, "shapes": QUICK_MATMUL_SHAPES if quick else MATMUL_SHAPES, "repeats": 5}
    limits = run_in_subprocess(task, timeout, script=__file__)
    if limits.pop("status") != "ok":
        raise SystemExit(f"measuring the machine's limits failed: {limits.get('note')}")
    return limits


def limits_sentence(limits: dict) -> str:
    """The machine's limits in one sentence, for the line above a table."""
    return (
        f"{limits['cpu']}, {limits['threads']} threads; measured in the same run: best product rates fp32 "
        f"{limits['fp32_gflops']:.0f} GFLOP/s, bf16 {limits['bf16_gflops']:.0f} GFLOP/s; copy bandwidth "
        f"{limits['copy_gb_s']:.1f} GB/s"
    )


def read_memory_mb() -> dict:
    """Current (VmRSS) and peak (VmHWM) resident memory of this process in MB, from /proc."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, amount = line.split(":")
                values[name] = int(amount.split()[0]) / 1024
    return {"rss": values["VmRSS"], "peak": values["VmHWM"]}


def reset_peak_memory() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM, also ru_maxrss) to the current RSS; False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def round_up(length: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= `length`."""
    return -(-length // multiple) * multiple


def worker_main(task_path: str, measure) -> None:
    """A worker process's whole life: read the task file, `measure(task)`, write the result where it says."""
    task = json.loads(Path(task_path).read_text())
    Path(task["result_path"]).write_text(json.dumps(measure(task)))


def run_in_subprocess(task: dict, timeout: float, python: str = sys.executable, script: str = __file__) -> dict:
    """Run `task` with `script --worker` in a fresh process of `python`; returns its result with "status": "ok",
    or a status ("timeout", "error") with a note."""
    with tempfile.TemporaryDirectory(prefix="lsg-bench-") as tmp:
        task_path, result_path = Path(tmp) / "task.json", Path(tmp) / "result.json"
        task_path.write_text(json.dumps({**task, "result_path": str(result_path)}))
        threads = str(task["threads"])
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        command = [python, str(Path(script).resolve()), "--worker", str(task_path)]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return {"status": "timeout", "note": f"timed out after {timeout:.0f} s"}
        if proc.returncode == 0 and result_path.exists():
            return {"status": "ok", **json.loads(result_path.read_text())}
        if proc.returncode < 0:
            note = f"killed by signal {-proc.returncode}" + (" (out of memory?)" if proc.returncode == -9 else "")
        else:
            lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
            note = f"error: {lines[-1] if lines else f'exit code {proc.returncode}'}"
        return {"status": "error", "note": note[:300]}


def write_results(out_dir: Path, name: str, results: dict, text: str) -> None:
    """A benchmark's results as `name`.json and its markdown as `name`.md in `out_dir` (made if needed); the
    markdown is printed too."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(results, indent=1))
    (out_dir / f"{name}.md").write_text(text)
    print(text)


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="This machine's limits: product rates and copy bandwidth.")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--quick", action="store_true", help="small products: a smoke test")
    parser.add_argument("--worker", metavar="TASK", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args.worker, measure_limits)
        return
    print(limits_sentence(machine_limits(args.threads, args.quick)))


if __name__ == "__main__":
    main()
