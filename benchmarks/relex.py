"""Benchmark: RELEX rank-1 SVD of every tensor + one extrapolated checkpoint, on a synthetic ≈100 M-param ×
16-checkpoint bf16 trajectory (helpers.lib.synthetic), against a plain read of the same files.

    nice -n 10 .venv/bin/python benchmarks/relex.py [--dir DIR] [--n-params 1e8] [--chunk-mb 256] [--out FILE.json]

The trajectory (the weight-linearity benchmark's: 16 checkpoints every 100 steps, drift 2e-3, noise 2e-4) is written
once — to --dir, else under outputs/cache/ — and reused. One run times, in this order: a cold plain read of every
checkpoint file (after evicting these files from the page cache with posix_fadvise(DONTNEED), as
benchmarks/weight_linearity.py does), a warm plain read (the same again), then RELEX from a cold cache in a fresh
child process, so that its peak RSS covers only reading the trajectory, the SVD and writing the checkpoint (imports
included). RELEX time = SVD + writing the extrapolated checkpoint. Targets: RELEX ≤ 3 × the cold plain read, peak RSS
≤ 1 GB, and the median rank-1 explained variance within 1e-3 of its known answer.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = list(range(0, 1501, 100))  # 16 checkpoints, as in the weight-linearity benchmark
DRIFT, NOISE = 2e-3, 2e-4
TARGET_RSS_GB, TARGET_RATIO_COLD = 1.0, 3.0


def expected_explained_variance() -> float:
    """The known answer: every entry drifts by DRIFT·u·t/t_max plus iid NOISE per checkpoint, so rank 1 holds
    Σ_t (DRIFT·t/t_max)² of each entry's Σ_t (DRIFT·t/t_max)² + T·NOISE² (bf16 rounding ignored)."""
    t = [s / STEPS[-1] for s in STEPS[1:]]
    signal = DRIFT**2 * sum(x * x for x in t)
    return signal / (signal + len(t) * NOISE**2)


def trajectory(n_params: float, out: Path | None = None) -> Path:
    """The synthetic trajectory (written on first use, then reused)."""
    import torch

    from helpers.lib.cache import cache_dir
    from helpers.lib.synthetic import write_synthetic_trajectory

    spec = {"n_params": n_params, "steps": STEPS, "dtype": "bf16", "drift": DRIFT, "noise": NOISE, "seed": 0}
    out = out or cache_dir("synthetic-trajectory", spec, 1)
    if not out.exists():
        write_synthetic_trajectory(out, n_params, STEPS, torch.bfloat16, drift=DRIFT, noise=NOISE, seed=0)
    return out


def measure(run_dir: Path, chunk_bytes: int) -> dict:
    """Rank-1 SVD of all tensors (no cache) + one checkpoint extrapolated to 2× the last step; times and peak RSS."""
    from helpers.lib import relex
    from helpers.lib.trajectory import Trajectory

    with tempfile.TemporaryDirectory(dir=run_dir.parent) as tmp:
        os.environ["RLVR_OUTPUTS"] = tmp  # a fresh SVD cache: measure the computation, not a cache hit
        t0 = time.perf_counter()
        traj = Trajectory(run_dir)
        dec = relex.decompose(traj, rank=1, chunk_bytes=chunk_bytes)
        t1 = time.perf_counter()
        relex.extrapolate(dec, 2 * traj.steps[-1], Path(tmp) / "extrapolated")
        t2 = time.perf_counter()
        ev = sorted(dec.explained_variance().values())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "n_params": sum(traj.numel(name) for name in traj.names),
        "checkpoints": len(traj.steps),
        "tensors": len(traj.names),
        "chunk_mb": chunk_bytes >> 20,
        "svd_seconds": round(t1 - t0, 2),
        "write_seconds": round(t2 - t1, 2),
        "relex_seconds": round(t2 - t0, 2),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_gb": round(usage.ru_maxrss * 1024 / 1e9, 3),  # ru_maxrss is in KiB
        "rank1_explained_variance_median": round(ev[len(ev) // 2], 4),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", type=Path, help="where the trajectory is (reused if present) or goes")
    p.add_argument("--n-params", type=float, default=100e6)
    p.add_argument("--chunk-mb", type=int, default=256, help="column-chunk budget of the Gram pass (MB)")
    p.add_argument("--out", type=Path, help="also write the figures here as JSON")
    p.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # child process: measure this trajectory
    a = p.parse_args(argv)
    if a.measure:
        print(json.dumps(measure(a.measure, a.chunk_mb << 20)))
        return {}
    from weight_linearity import evict, files_of, plain_read

    run_dir = trajectory(a.n_params, a.dir)
    files = files_of(run_dir)
    evict(files)
    cold, nbytes = plain_read(files)
    warm, _ = plain_read(files)
    evict(files)
    child = subprocess.run(
        [sys.executable, __file__, "--measure", str(run_dir), "--chunk-mb", str(a.chunk_mb)],
        check=True,
        capture_output=True,
        text=True,
    )
    figures = {
        "bytes": nbytes,
        "plain_read_cold_seconds": round(cold, 2),
        "plain_read_warm_seconds": round(warm, 2),
        **json.loads(child.stdout.strip().splitlines()[-1]),
    }
    figures.update(
        ratio_cold=round(figures["relex_seconds"] / cold, 2),
        ratio_warm=round(figures["relex_seconds"] / warm, 2),
        expected_explained_variance=round(expected_explained_variance(), 4),
        load_average=os.getloadavg()[0],
        target_ratio_cold=TARGET_RATIO_COLD,
        target_peak_rss_gb=TARGET_RSS_GB,
    )
    answer_error = abs(figures["rank1_explained_variance_median"] - figures["expected_explained_variance"])
    figures["within_target"] = (
        figures["ratio_cold"] <= TARGET_RATIO_COLD and figures["peak_rss_gb"] <= TARGET_RSS_GB and answer_error <= 1e-3
    )
    print(json.dumps(figures, indent=2))
    if a.out:
        a.out.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
