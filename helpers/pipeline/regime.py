"""The regime search behind the embedded default: which CPU-scale RLVR setting learns on every seed, moves in straight
lines, and is cheap enough for `make run`?

    python -m helpers.pipeline.regime params/sweeps/regime_search.yaml [--workers 2] [--only NAME ...]
                                      [--payoffs NAME ...]

A sweep file (`params/sweeps/regime_search.yaml`) names a params file (`base`), the RL seeds, the selection criteria
(written down before any setting was run) and the settings (dotted overrides of `base`). Stage 1 measures every setting
on every seed; stage 2 (`--payoffs`) adds the extrapolation payoffs of the finalists. Each (setting, seed) is one job in
its own single-threaded process (`--workers` side by side), written to `<out>/<setting>/seed-<s>.json` and skipped when
present; the trained runs are the project's cached runs (`training.embedded_trajectory`), so the chosen setting's seeds
are reused by `make run`. The tables go to `<out>/regime.json` and `<out>/regime.md` (default `outputs/regime/<sweep
name>/`).

Stage 1, per seed: held-out greedy accuracy of base and final checkpoint (`gain`), `peak` and `end_drop` (peak − final),
`late_gain` (the least-squares slope over the last third of the run × its length: is it still rising?), `early_share`
(the share of the gain reached by a quarter of the run: 0.25 = linear in time), `accuracy_r2` (R² of held-out accuracy
against step), weight R² (notebook 01's rule: median, share above 0.7), token log-prob R² (notebook 02's rule:
median), RL training seconds. Stage 2, per seed: two-point weight extrapolation from (0, 0.3 T) to T against the real
θ_T; RELEX rank-1 linear extrapolation from the 15 % and 25 % prefixes to T; RL-Extra with the first `rl_extra.configs`
pair (scaled, optimizer reset): real RL steps to the standard run's final accuracy and the speedup.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from helpers.experiments import nb01_weight_linearity as nb01
from helpers.experiments import nb02_output_linearity as nb02
from helpers.experiments import nb04_extrapolation as nb04
from helpers.experiments import nb05_rl_extra as nb05
from helpers.experiments.training_log import read_log
from helpers.lib import cli, extrapolation, models, probes, relex, runs, scoring, training
from helpers.lib import config as config_mod
from helpers.lib.cache import build_info
from helpers.lib.device import cpu_threads, pick
from helpers.lib.linearity import r2, weight_r2
from helpers.lib.paths import atomic_write_json, atomic_write_text, outputs_root, resolve
from helpers.lib.trajectory import Trajectory

CRITERIA = ("min_gain", "max_end_drop", "min_weight_frac", "min_token_median", "max_rl_seconds")


# ------------------------------------------------------------------------------------------------------------ the sweep


def load_sweep(path) -> dict:
    """The sweep file: {name, base, seeds, baseline, common, criteria, settings: [{name, overrides, note}]}, checked.
    `baseline` (the regime the settings start from) and `common` (measurement knobs) apply to every setting."""
    path = resolve(path)
    data = config_mod.parse_yaml(path.read_text())
    for key in ("base", "seeds", "criteria", "settings"):
        if key not in (data or {}):
            raise config_mod.ConfigError(f"{path}: missing key {key!r}")
    missing = set(CRITERIA) - set(data["criteria"])
    if missing:
        raise config_mod.ConfigError(f"{path}: criteria lacks {', '.join(sorted(missing))}")
    names = [s["name"] for s in data["settings"]]
    if len(set(names)) != len(names):
        raise config_mod.ConfigError(f"{path}: setting names must be unique, got {names}")
    if data.get("chosen") is not None and data["chosen"] not in names:
        raise config_mod.ConfigError(f"{path}: chosen: {data['chosen']!r} is not one of the settings")
    data.setdefault("name", path.stem)
    data.setdefault("common", {})
    data.setdefault("baseline", {})
    data["source"] = str(path)
    for s in data["settings"]:
        setting_config(data, s["name"], data["seeds"][0])  # every override must name a knob of `base`
    return data


def setting_config(sweep: Mapping, name: str, seed: int):
    """The config of one setting at one RL seed: `base` + `baseline` + `common` + the setting's overrides + rl.seed."""
    setting = next((s for s in sweep["settings"] if s["name"] == name), None)
    if setting is None:
        raise KeyError(f"{sweep['source']}: no setting {name!r}")
    overrides = {**sweep["baseline"], **sweep["common"], **(setting.get("overrides") or {}), "rl.seed": int(seed)}
    return config_mod.load(sweep["base"], profile="default", overrides=overrides)


# ------------------------------------------------------------------------------------------------------ measurements


def curve_stats(steps: Sequence[float], accuracy: Sequence[float]) -> dict:
    """Shape of a held-out accuracy curve (see the module docstring)."""
    t, a = np.asarray(steps, dtype=float), np.asarray(accuracy, dtype=float)
    base, final, peak, span = a[0], a[-1], a.max(), t[-1] - t[0]
    late = t >= t[0] + 2 * span / 3
    slope = np.polyfit(t[late], a[late], 1)[0] if late.sum() >= 2 else np.nan
    quarter = a[np.argmin(np.abs(t - (t[0] + span / 4)))]
    gain = final - base
    return {
        "base": float(base),
        "final": float(final),
        "gain": float(gain),
        "peak": float(peak),
        "end_drop": float(peak - final),
        "late_gain": float(slope * span / 3),
        "early_share": float((quarter - base) / gain) if abs(gain) > 1e-9 else float("nan"),
        "accuracy_r2": float(r2(a[:, None], t)[0]),
    }


def linearity_stats(cfg, run_dir: Path) -> dict:
    """Weight R² (notebook 01's sampling and filters) and token log-prob R² (notebook 02's probes) of a run."""
    traj = Trajectory(run_dir)
    w = nb01.summary(weight_r2(traj, seed=cfg.seed, progress=False, **cfg.weight_linearity.entries))
    tok = nb02.token_r2(traj, probes.for_run(cfg, traj), cfg, pick(cfg.device))
    return {
        "weight_r2_median": w["median"],
        "weight_r2_frac_above_0_7": w["frac_above"],
        "token_r2_median": tok["median"],
        "tokens_kept": tok["kept"],
    }


def measure(cfg) -> dict:
    """Stage 1 of one config: train (or reuse) its run, then curve, linearity and cost."""
    run = training.embedded_trajectory(cfg)
    log = read_log(run).dropna(subset=["heldout_accuracy"])
    return {
        **curve_stats(log["step"], log["heldout_accuracy"]),
        **linearity_stats(cfg, run),
        "heldout_items": int(cfg.eval.heldout_during_training),
        "rl_seconds": build_info(run)["seconds"],
        "run": str(run),
    }


def greedy_accuracy(cfg, model_dir) -> float:
    """Greedy held-out accuracy of a model directory on the `eval.heldout_during_training` problems (the items
    `log.csv` scores), so it compares directly with the run's curve."""
    items = runs.heldout_items(cfg)[: int(cfg.eval.heldout_during_training)]
    with cpu_threads():
        model, tok = models.load_model(model_dir, cfg.device)
        return scoring.greedy_accuracy(model, tok, items, int(cfg.eval.max_new_tokens), int(cfg.eval.batch_size))


def payoffs(cfg) -> dict:
    """Stage 2 of one config (its run must be trained): weight extrapolation, RELEX and RL-Extra against the run."""
    run = training.embedded_trajectory(cfg)
    traj = Trajectory(run)
    log = read_log(run).dropna(subset=["heldout_accuracy"])
    real = dict(zip(log["step"].astype(int), log["heldout_accuracy"]))
    last = traj.steps[-1]
    out = {"final": real[last]}
    t1 = nb04.snap(traj, 0.3)
    with tempfile.TemporaryDirectory(dir=outputs_root(), prefix=".regime-") as tmp:
        path = extrapolation.extrapolate(traj, 0, t1, last, Path(tmp) / "weight", cfg.extrapolation.norms)
        out |= {"weight_t1": t1, "weight_t1_accuracy": real[t1], "weight_extrapolated": greedy_accuracy(cfg, path)}
        for frac in (0.15, 0.25):
            dec = relex.decompose(traj, relex.prefix_step(traj, frac, int(cfg.relex.min_points)), 1)
            path = relex.extrapolate(dec, last, Path(tmp) / f"relex-{frac}")
            out[f"relex_{int(frac * 100)}"] = greedy_accuracy(cfg, path)
    m, n = (max(1, nb05.scaled(cfg, x)) for x in cfg.rl_extra.configs[0])
    extra = read_log(nb05.train_run(cfg, m, n, "reset")).dropna(subset=["heldout_accuracy"])
    reach = next((int(s) for s, a in zip(extra["step"], extra["heldout_accuracy"]) if a >= out["final"] - 1e-9), None)
    std_reach = next(int(s) for s, a in zip(log["step"], log["heldout_accuracy"]) if a >= out["final"] - 1e-9)
    out |= {
        "rl_extra": f"({m},{n})",
        "rl_extra_final": float(extra["heldout_accuracy"].iloc[-1]),
        "rl_extra_steps_to_final": reach,
        "standard_steps_to_final": std_reach,
        "rl_extra_speedup": std_reach / reach if reach else float("nan"),
    }
    return out


# -------------------------------------------------------------------------------------------------------------- jobs


def _record(out: Path, name: str, seed: int, stage: str) -> Path:
    return out / name / f"{'seed' if stage == 'measure' else 'payoffs'}-{seed}.json"


def _job(sweep_file: str, name: str, seed: int, stage: str, dest: str) -> str:
    """One (setting, seed, stage); writes `dest` atomically. Returns a progress line: a failed setting must not stop
    the sweep (it shows in the table as missing seeds)."""
    try:
        sweep = load_sweep(sweep_file)
        cfg = setting_config(sweep, name, seed)
        t0 = time.time()
        if stage == "base":
            training.base_model(cfg)
        else:
            result = measure(cfg) if stage == "measure" else payoffs(cfg)
            atomic_write_json(
                dest, {"setting": name, "seed": seed, "stage": stage, "seconds": round(time.time() - t0, 1), **result}
            )
        return f"{stage:8s} {name} seed {seed}: done ({time.strftime('%H:%M:%S')})"
    except Exception as e:  # noqa: BLE001
        return f"{stage:8s} {name} seed {seed}: FAILED {type(e).__name__}: {e}"


def run_jobs(sweep: Mapping, out: Path, names: Sequence[str], stage: str, workers: int) -> None:
    """Bases first (one per setting, so seeds never build the same base twice), then every (setting, seed), each in
    its own single-threaded process (`training.in_processes`)."""

    todo = [(n, s) for n in names for s in sweep["seeds"] if not _record(out, n, s, stage).is_file()]
    bases = [(sweep["source"], n, sweep["seeds"][0], "base", "") for n in dict.fromkeys(n for n, _ in todo)]
    runs = [(sweep["source"], n, s, stage, str(_record(out, n, s, stage))) for n, s in todo]
    for phase in (bases, runs):
        for line in training.in_processes(_job, phase, workers):
            print(line, file=sys.stderr if "FAILED" in line else sys.stdout, flush=True)


# ------------------------------------------------------------------------------------------------------------ tables


def collect(sweep: Mapping, out: Path) -> list[dict]:
    """Per setting: its per-seed records and summaries over seeds, with the criteria verdicts."""
    crit = sweep["criteria"]
    rows = []
    for s in sweep["settings"]:
        seeds = [json.loads(p.read_text()) for p in sorted((out / s["name"]).glob("seed-*.json"))]
        pay = [json.loads(p.read_text()) for p in sorted((out / s["name"]).glob("payoffs-*.json"))]
        row: dict[str, Any] = {
            "name": s["name"],
            "overrides": s.get("overrides") or {},
            "note": s.get("note", ""),
            "seeds": seeds,
            "payoffs": pay,
            "n_seeds": len(seeds),
        }
        if seeds:
            col = lambda k, seeds=seeds: [r[k] for r in seeds]  # noqa: E731
            row |= {
                "base": statistics.mean(col("base")),
                "gain_mean": statistics.mean(col("gain")),
                "gain_min": min(col("gain")),
                "end_drop_max": max(col("end_drop")),
                "late_gain_mean": statistics.mean(col("late_gain")),
                "early_share_mean": statistics.mean(col("early_share")),
                "weight_frac_mean": statistics.mean(col("weight_r2_frac_above_0_7")),
                "weight_frac_min": min(col("weight_r2_frac_above_0_7")),
                "token_median_mean": statistics.mean(col("token_r2_median")),
                "token_median_min": min(col("token_r2_median")),
                "rl_seconds_max": max(col("rl_seconds")),
            }
            complete = len(seeds) == len(sweep["seeds"])
            row["a"] = complete and row["gain_min"] >= crit["min_gain"] and row["end_drop_max"] <= crit["max_end_drop"]
            row["b"] = (
                complete
                and row["weight_frac_min"] >= crit["min_weight_frac"]
                and row["token_median_min"] >= crit["min_token_median"]
            )
            row["c"] = complete and row["rl_seconds_max"] <= crit["max_rl_seconds"]
        rows.append(row)
    return rows


def _f(x, fmt=".2f") -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, fmt)


def markdown(sweep: Mapping, rows: Sequence[dict]) -> str:
    """The sweep as Markdown: criteria, one row per setting (over seeds), per-seed detail and payoffs."""
    c = sweep["criteria"]
    yes = lambda v: "✓" if v else "✗"  # noqa: E731
    lines = [
        f"# Regime search `{sweep['name']}`",
        "",
        f"Base params `{sweep['base']}` with the baseline regime `{json.dumps(sweep['baseline'])}`, RL seeds "
        f"{sweep['seeds']}, measurement overrides shared by every setting: `{json.dumps(sweep['common'])}`.",
        "",
        "Criteria (fixed before the search): (a) held-out greedy gain ≥ "
        f"{c['min_gain']} on every seed and final ≥ peak − {c['max_end_drop']}; (b) weight R² > 0.7 for ≥ "
        f"{c['min_weight_frac']:.0%} of entries and token R² median ≥ {c['min_token_median']} on every seed; "
        f"(c) RL run ≤ {c['max_rl_seconds']} s per seed.",
        "",
        "| setting | seeds | base | gain mean (min) | end drop max | late gain | early share | weight frac mean "
        "(min) | token median mean (min) | RL s | a | b | c |",
        "|" + "---|" * 13,
    ]
    for r in rows:
        if not r["n_seeds"]:
            lines.append(f"| {r['name']} | 0 | not run |" + " |" * 10)
            continue
        lines.append(
            f"| {r['name']} | {r['n_seeds']} | {_f(r['base'])} | {r['gain_mean']:+.3f} ({r['gain_min']:+.3f}) | "
            f"{_f(r['end_drop_max'], '.3f')} | {r['late_gain_mean']:+.3f} | {_f(r['early_share_mean'])} | "
            f"{r['weight_frac_mean']:.2f} ({r['weight_frac_min']:.2f}) | {_f(r['token_median_mean'])} "
            f"({_f(r['token_median_min'])}) | {r['rl_seconds_max']:.0f} | {yes(r['a'])} | {yes(r['b'])} | "
            f"{yes(r['c'])} |"
        )
    lines += ["", "## Settings", ""]
    lines += [
        f"- **{r['name']}** `{json.dumps(r['overrides'])}`" + (f": {r['note']}" if r["note"] else "") for r in rows
    ]
    lines += [
        "",
        "## Per seed",
        "",
        "| setting | seed | base → final | peak | late gain | accuracy R² | weight median / "
        "frac > 0.7 | token median | RL s |",
        "|" + "---|" * 9,
    ]
    for r in rows:
        for s in r["seeds"]:
            lines.append(
                f"| {r['name']} | {s['seed']} | {s['base']:.3f} → {s['final']:.3f} | {s['peak']:.3f} | "
                f"{s['late_gain']:+.3f} | {_f(s['accuracy_r2'])} | {s['weight_r2_median']:.2f} / "
                f"{s['weight_r2_frac_above_0_7']:.2f} | {_f(s['token_r2_median'])} | {s['rl_seconds']:.0f} |"
            )
    pays = [(r["name"], p) for r in rows for p in r["payoffs"]]
    if pays:
        lines += [
            "",
            "## Payoffs (stage 2)",
            "",
            "| setting | seed | real final | weight extrap. (0, t1) → T | θ_t1 | RELEX 15 % → T | RELEX 25 % → T | "
            "RL-Extra | its steps / standard's to the final accuracy | speedup |",
            "|" + "---|" * 10,
        ]
        for name, p in pays:
            lines.append(
                f"| {name} | {p['seed']} | {p['final']:.3f} | {p['weight_extrapolated']:.3f} (t1 = "
                f"{p['weight_t1']}) | {p['weight_t1_accuracy']:.3f} | {p['relex_15']:.3f} | "
                f"{p['relex_25']:.3f} | {p['rl_extra']} | {p['rl_extra_steps_to_final']} / "
                f"{p['standard_steps_to_final']} | {_f(p['rl_extra_speedup'])} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description="Run the regime search of a sweep file and write its tables.")
    p.add_argument("sweep", help="sweep file, e.g. params/sweeps/regime_search.yaml")
    p.add_argument("--workers", type=int, default=2, help="single-threaded jobs side by side")
    p.add_argument("--only", nargs="+", help="stage 1 for these settings only")
    p.add_argument("--payoffs", nargs="+", default=[], help="stage 2 (payoffs) for these settings")
    p.add_argument("--out", type=Path, help="default: outputs/regime/<sweep name>/")
    p.add_argument("--report-only", action="store_true", help="only rewrite the tables from the job files")
    a = p.parse_args(argv)
    sweep = load_sweep(a.sweep)
    out = a.out or outputs_root() / "regime" / sweep["name"]
    known = [s["name"] for s in sweep["settings"]]
    for name in [*(a.only or []), *a.payoffs]:
        if name not in known:
            p.error(f"no setting {name!r} in {sweep['source']} (have: {', '.join(known)})")
    if not a.report_only:
        if not a.payoffs or a.only:
            run_jobs(sweep, out, a.only or known, "measure", a.workers)
        if a.payoffs:
            run_jobs(sweep, out, a.payoffs, "payoffs", a.workers)
    rows = collect(sweep, out)
    atomic_write_json(out / "regime.json", {"sweep": {k: v for k, v in sweep.items()}, "settings": rows})
    atomic_write_text(out / "regime.md", markdown(sweep, rows))
    print(f"{out / 'regime.md'}")
    return out


if __name__ == "__main__":
    cli.run(main)
