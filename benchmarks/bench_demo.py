"""Time `virion demo` end to end and record what it measured (wall, CPU time, accuracies, CPU, load).

Why: the demo promises a wall time on 2-core CPUs (docs/benchmarks.md); this script is how that
figure is measured, so every number in the record sits beside the machine and the load it ran
under. It runs the real CLI in a subprocess (the synthetic data is generated once per seed and
reused; delete `--out`/synthetic-* to time its generation too), and writes one JSON record:
wall seconds, the child's user+system CPU seconds, /proc/loadavg before and after, the CPU
model and flags, ONEDNN_MAX_CPU_ISA when set, and each model's test accuracy and macro-F1 read
from the demo's own summary lines.

    .venv/bin/python benchmarks/bench_demo.py --seed 0 --json benchmarks/results/demo_s0.json
    ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/bench_demo.py --seed 0 --json ...  # AVX2 kernels
A shared machine inflates wall time: run it alone, or with priority (`nice -n -15`), and read
the recorded load average before quoting the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")
LINE = re.compile(r"^\s*(?P<model>[\w-]+): test accuracy (?P<acc>[\d.]+|n/a), macro-F1 (?P<f1>[\d.]+|n/a)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0, help="virion demo --seed (data and training)")
    p.add_argument("--preset", default="reduced", help="virion demo --preset")
    p.add_argument("--out", default="virion-demo", help="virion demo --out")
    p.add_argument("--models", nargs="+", default=None, help="virion demo --models (default: the demo's)")
    p.add_argument("--json", default=None, help="write the record to this JSON file")
    p.add_argument("--note", default="", help="free text stored in the record (e.g. what else ran)")
    return p.parse_args(argv)


def cpu_info() -> dict:
    """CPU model name and the speed flags, from /proc/cpuinfo where there is one."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": platform.processor() or None, "flags": None}
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model is None:
            model = value.strip()
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return {"model": model, "flags": [f for f in SPEED_FLAGS if f in flags]}


def loadavg() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def parse_accuracies(stdout: str) -> dict[str, dict]:
    """{model: {"accuracy", "macro_f1"}} from the demo's `<model>: test accuracy 0.xxx, macro-F1 0.xxx` lines."""
    found = {}
    for line in stdout.splitlines():
        m = LINE.match(line)
        if m:
            value = {k: None if m[k] == "n/a" else float(m[k]) for k in ("acc", "f1")}
            found[m["model"]] = {"accuracy": value["acc"], "macro_f1": value["f1"]}
    return found


def main(argv=None) -> int:
    args = parse_args(argv)
    virion = Path(sys.executable).with_name("virion")
    command = [str(virion)] if virion.exists() else [sys.executable, "-m", "virion.cli.main"]
    command += ["demo", "--preset", args.preset, "--out", args.out, "--seed", str(args.seed)]
    if args.models:
        command += ["--models", *args.models]
    record = {
        "command": " ".join(command),
        "cpu": cpu_info(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "nice": os.nice(0),
        "loadavg_before": loadavg(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True)
    record["wall_seconds"] = round(time.monotonic() - start, 1)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    record["cpu_seconds"] = round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1)
    record["max_rss_mb"] = round(after.ru_maxrss / 1024, 1)
    record["loadavg_after"] = loadavg()
    record["returncode"] = proc.returncode
    record["models"] = parse_accuracies(proc.stdout)
    lines = proc.stdout.strip().splitlines()
    record["closing_line"] = lines[-1] if lines else ""
    record["note"] = args.note
    print(proc.stdout[-3000:])
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
    print(json.dumps(record, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
