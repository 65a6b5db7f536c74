"""Benchmark: weight R² (helpers.lib.linearity.weight_r2) on a ≈100 M-parameter Qwen2-shaped run × 16 bf16 checkpoints.

    nice -n 10 .venv/bin/python benchmarks/weight_linearity.py [--dir DIR] [--n-params 1e8] [--checkpoints 16]

Writes the synthetic trajectory (helpers.lib.synthetic, in a child process so its memory does not count) unless --dir
already holds one, then times, in this order:
  warm: an untimed read to fill the page cache, then a plain sequential read of every checkpoint file (bytes to
        nowhere), the analysis, the plain read again;
  cold: the same after evicting these files (and only these) from the page cache with posix_fadvise(DONTNEED).
Each kind of round runs --repeats times (shared cores make single timings noisy). Reports wall times, the ratio
analysis / plain read per round and its median, peak RSS of this process (ru_maxrss: imports + analysis), and
the measured R² median next to the known answer (helpers.lib.synthetic.reference_r2). Targets: peak RSS ≤ 1.5 GB,
analysis ≤ 2 × plain read.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from helpers.lib import linearity, synthetic
from helpers.lib.trajectory import Trajectory

CHUNK = 16 << 20


def files_of(run: Path) -> list[Path]:
    return sorted(run.glob("checkpoint-*/*.safetensors"))


def plain_read(files: list[Path]) -> tuple[float, int]:
    """Seconds to read every byte of `files` sequentially into one reused buffer, and the byte count."""
    buf, total = bytearray(CHUNK), 0
    start = time.perf_counter()
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                total += n
    return time.perf_counter() - start, total


def evict(files: list[Path]) -> None:
    """Drop these files' pages from the page cache (flushing them first); other files are untouched."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def analyse(run: Path, fraction: float) -> tuple[float, linearity.WeightLinearity]:
    start = time.perf_counter()
    result = linearity.weight_r2(Trajectory(run), fraction=fraction, seed=0)
    return time.perf_counter() - start, result


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", type=Path, help="where the trajectory is (reused if present) or goes; default: a temp dir")
    p.add_argument("--n-params", type=float, default=100e6)
    p.add_argument("--checkpoints", type=int, default=16)
    p.add_argument("--every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--drift", type=float, default=2e-3)
    p.add_argument("--noise", type=float, default=2e-4)
    p.add_argument("--fraction", type=float, default=0.001)
    p.add_argument("--no-cold", action="store_true", help="skip the cold-cache round")
    p.add_argument("--repeats", type=int, default=3, help="rounds of each kind; the median ratio is the figure")
    a = p.parse_args(argv)

    tmp = None if a.dir else tempfile.TemporaryDirectory(prefix="wl-bench-")
    run = a.dir or Path(tmp.name) / "run"
    steps = [i * a.every for i in range(a.checkpoints)]
    if not run.exists():
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "helpers.lib.synthetic",
                str(run),
                "--n-params",
                str(a.n_params),
                "--steps",
                ",".join(map(str, steps)),
                "--dtype",
                "bf16",
                "--drift",
                str(a.drift),
                "--noise",
                str(a.noise),
            ],
            check=True,
        )
        print(f"wrote the trajectory in {time.perf_counter() - start:.1f} s")
    files = files_of(run)
    traj = Trajectory(run)
    n_params = sum(traj.numel(n) for n in traj.names)
    print(
        f"{run}: {len(traj.steps)} checkpoints × {n_params / 1e6:.1f} M parameters (bf16), "
        f"{sum(f.stat().st_size for f in files) / 1e9:.2f} GB on disk; RSS before analysis {peak_rss_gb():.2f} GB"
    )

    rounds = [("warm", False)] + ([] if a.no_cold else [("cold", True)])
    result, ratios = None, {label: [] for label, _ in rounds}
    for _ in range(a.repeats):
        for label, cold in rounds:
            if cold:
                evict(files)
            else:
                plain_read(files)  # fill the page cache
            read1, nbytes = plain_read(files)
            if cold:
                evict(files)
            wall, result = analyse(run, a.fraction)
            if cold:
                evict(files)
            read2, _ = plain_read(files)
            read = (read1 + read2) / 2
            ratios[label].append(wall / read)
            print(
                f"[{label}] plain read {read1:.2f} s before / {read2:.2f} s after ({nbytes / 1e9 / read:.2f} GB/s); "
                f"R² analysis {wall:.2f} s; ratio {wall / read:.2f} (target ≤ 2)"
            )
    for label, r in ratios.items():
        print(f"[{label}] median ratio over {len(r)} round(s): {np.median(r):.2f} (target ≤ 2)")
    rss = peak_rss_gb()
    print(f"peak RSS {rss:.2f} GB (target ≤ 1.5)")

    s = result.summary()
    ref = synthetic.reference_r2(steps, a.drift, a.noise)
    print(
        f"entries: {s['sampled']:,} sampled, {s['kept']:,} kept, {s['dropped_range']:,} dropped (range), "
        f"{s['dropped_distinct']:,} dropped (distinct)"
    )
    print(
        f"R² median {s['median']:.3f} (known answer before bf16 rounding and filters: {np.median(ref):.3f}); "
        f"share > 0.7: {s['frac_above']:.3f} (known: {np.mean(ref > 0.7):.3f})"
    )
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
