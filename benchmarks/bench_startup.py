"""Start-up time of the `virion` command: wall time of `virion --help` (and a few others) in fresh processes.

    .venv/bin/python benchmarks/bench_startup.py               # 7 runs per command
    .venv/bin/python benchmarks/bench_startup.py --runs 3 --label before

Each command runs in a new interpreter (`python -m virion.cli.main ...`, the same code path as the
`virion` entry point), so nothing is warm but the OS file cache; the first run is a warm-up and
not counted. Prints the median and min/max and writes JSON to benchmarks/results/startup[_LABEL].json.
Target (issue 9): `virion --help` under 1 s. Numbers are measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = (["--help"], ["--version"], ["train", "--help"], ["synth", "--help"])
# What `virion --help` must not import; checked once per command after the timed runs.
_PROBE = (
    "import sys, runpy; sys.argv = ['virion'] + sys.argv[1:]\n"
    "try:\n    runpy.run_module('virion.cli.main', run_name='__main__')\n"
    "except SystemExit:\n    pass\n"
    "print('HEAVY', sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules))\n"
)


def time_command(args: list[str], runs: int) -> dict:
    cmd = [sys.executable, "-m", "virion.cli.main", *args]
    subprocess.run(cmd, capture_output=True, check=False)  # warm-up: file cache, .pyc files
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=False)
        times.append(time.perf_counter() - t0)
    probe = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, check=False)
    heavy = next((line[6:] for line in probe.stdout.splitlines() if line.startswith("HEAVY ")), "?")
    return {
        "command": "virion " + " ".join(args),
        "runs": runs,
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
        "heavy_modules_imported": heavy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="timed runs per command (default 7)")
    parser.add_argument("--label", default="", help="suffix of the JSON file name, e.g. before/after")
    args = parser.parse_args()
    results = []
    for command in COMMANDS:
        r = time_command(command, max(1, args.runs))
        results.append(r)
        print(
            f"{r['command']:<24} median {r['median_s']:6.3f} s  (min {r['min_s']:.3f}, max {r['max_s']:.3f}, "
            f"{r['runs']} runs)  heavy imports: {r['heavy_modules_imported']}"
        )
    out = Path(__file__).resolve().parent / "results" / f"startup{'_' + args.label if args.label else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "results": results,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
