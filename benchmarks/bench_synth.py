"""Speed of the synthetic TEM generator, one process (so the figure is "per core").

    .venv/bin/python benchmarks/bench_synth.py                 # 20 images per class at 256 px
    .venv/bin/python benchmarks/bench_synth.py --per-class 2   # quick check that it runs

Prints images per second for rendering alone (per class and overall) and for the whole
`generate_dataset` (render + write PNG 8-bit and TIFF 16-bit). Target: at least 100 images per
second per core at 256x256. Run it on a quiet machine; numbers are measured, never asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from virion.data.synth import CLASS_NAMES, generate_dataset, image_rng, render_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=20, help="images per class (default 20)")
    parser.add_argument("--size", type=int, default=256, help="image size in pixels (default 256)")
    parser.add_argument("--difficulty", type=float, default=1.0, help="generator difficulty (default 1)")
    args = parser.parse_args()

    render_image(CLASS_NAMES[0], image_rng(0, 0, 0), args.size, args.difficulty)  # warm-up (imports, caches)
    total = cpu_total = 0.0
    print("img/s by wall clock and by this process's CPU time (the fair per-core figure on a busy machine)")
    print(f"render only, {args.size}x{args.size}, difficulty {args.difficulty}, {args.per_class} per class")
    for ci, name in enumerate(CLASS_NAMES):
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(args.per_class):
            render_image(name, image_rng(1, ci, i), args.size, args.difficulty)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        total += dt
        cpu_total += dc
        print(f"  {name:12s} {args.per_class / dt:8.1f} img/s wall {args.per_class / dc:8.1f} img/s cpu")
    n = args.per_class * len(CLASS_NAMES)
    print(f"  {'all':12s} {n / total:8.1f} img/s wall {n / cpu_total:8.1f} img/s cpu")

    per_class = max(args.per_class, 3)
    for fmt, bits in (("png", 8), ("tif", 16)):
        with tempfile.TemporaryDirectory() as tmp:
            t0, c0 = time.perf_counter(), time.process_time()
            generate_dataset(
                Path(tmp) / "ds",
                per_class=per_class,
                size=args.size,
                fmt=fmt,
                bit_depth=bits,
                difficulty=args.difficulty,
                progress=False,
            )
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
        n = per_class * len(CLASS_NAMES)
        print(
            f"generate_dataset {fmt} {bits}-bit: {n / dt:8.1f} img/s wall {n / dc:8.1f} img/s cpu "
            f"(render + write + montage, 1 process)"
        )


if __name__ == "__main__":
    main()
