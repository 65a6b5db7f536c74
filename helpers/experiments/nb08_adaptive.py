"""Notebook 08, adaptive extrapolation: standard GRPO vs the best fixed RL-Extra (m, n) vs the adaptive policy
(`helpers.lib.adaptive.AdaptiveExtra`), from the same base with the same data stream, over the RL seeds.

Held-out items are split (`claims.split`, `claims.split_seed`): the best fixed (m, n) is chosen among notebook 05's
runs (seed rl.seed) on the `select` half, by a rule fixed before any run — fewest real steps to the standard run's
final accuracy, ties to the higher final accuracy — and every reported number is on the other half (`report`).
Accuracy is greedy, per item, at every checkpoint (cached `scoring.CachedScorer` with k = 0).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from helpers.experiments import claims as cl
from helpers.experiments import nb05_rl_extra, paper
from helpers.experiments.training_log import read_log
from helpers.lib import adaptive, cache, models, training
from helpers.lib.config import derive
from helpers.lib.linearity import moved_mask
from helpers.lib.monitor import LinearityMonitor, window_stats
from helpers.lib.rl_extra import effective_steps
from helpers.lib.runs import config_for, heldout_items, run_dirs, seed_list
from helpers.lib.trajectory import Trajectory, nearest_step

VERSION = 2  # `cache.cached_build` version of the adaptive runs (`train_run`; 2: effective steps after a rollback)
STANDARD, FIXED, ADAPTIVE = "standard", "best fixed", "adaptive"
METHODS = (STANDARD, FIXED, ADAPTIVE)


# ------------------------------------------------------------------------------------------------------------ runs
def _key(cfg) -> dict:
    """What an adaptive run is cached by: the embedded run's sections (`training.run_key`), the policy's knobs and
    probe size, and the monitor's sketch knobs."""
    policy = {k: cfg.adaptive[k] for k in (*adaptive.KNOBS, "probe_prompts")}
    sketch = {k: cfg.monitor[k] for k in ("fraction", "min_samples", "budget_mb")}
    return training.run_key(cfg, ("task", "model", "sft", "rl", "eval")) | {"adaptive": policy, "sketch": sketch}


def policy_config(cfg, overrides: dict):
    """`cfg` with a sweep entry's overrides of the `adaptive` section."""
    return derive(cfg, {f"adaptive.{k}": v for k, v in overrides.items()})


def setting_label(overrides: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in overrides.items()) or "as registered"


def cached_run(cfg) -> Path | None:
    """The adaptive run of `cfg` (at its rl.seed) when it is already built, else None."""
    return cache.cached("adaptive", _key(cfg), VERSION)


def train_run(cfg) -> Path:
    """One adaptive run with the rl section's settings from `base_model(cfg)`, probing `adaptive.probe_prompts`
    training prompts (sampled with rl.seed), cached under outputs/cache/adaptive-v<VERSION>-<hash>/; `build.json`
    records its jumps, probe and monitor seconds."""
    base = training.base_model(cfg)

    def build(tmp: Path) -> dict:
        _, tok = models.load_model(base, "cpu")
        train, _, _ = training.problems(cfg, tok)
        items = adaptive.probe_items(train, cfg.adaptive.probe_prompts, cfg.rl.seed)
        probe = adaptive.greedy_probe(items, tok, cfg.rl.max_completion_length, int(cfg.eval.batch_size))
        policy = adaptive.AdaptiveExtra.from_config(cfg, probe)
        training.train_rl(cfg, tmp, callbacks=[policy], base_dir=base)
        rec = policy.record()
        return {k: rec[k] for k in ("jumps", "probe_seconds", "probe_calls", "monitor_seconds")}

    return cache.cached_build("adaptive", _key(cfg), build, VERSION)


def train_all(cfg, fixed: dict, policy: dict) -> pd.DataFrame:
    """Every seed's standard, best fixed (`fixed`: m, n, optimizer) and adaptive run (`policy`: the chosen sweep
    entry), trained two at a time or reused: seed, method, dir, train_seconds."""
    run_dirs(cfg)
    todo = []
    for s in seed_list(cfg):
        c = config_for(cfg, s)
        if nb05_rl_extra.cached_run(c, fixed["m"], fixed["n"], fixed["optimizer"]) is None:
            todo.append((nb05_rl_extra.train_run, (c, fixed["m"], fixed["n"], fixed["optimizer"])))
        if cached_run(policy_config(c, policy)) is None:
            todo.append((train_run, (policy_config(c, policy),)))
    training.in_processes(_call, todo)
    rows = []
    for s in seed_list(cfg):
        c = config_for(cfg, s)
        dirs = {
            STANDARD: training.embedded_trajectory(c),
            FIXED: nb05_rl_extra.train_run(c, fixed["m"], fixed["n"], fixed["optimizer"]),
            ADAPTIVE: train_run(policy_config(c, policy)),
        }
        rows += [
            {"seed": s, "method": k, "dir": d, "train_seconds": cache.build_info(d)["seconds"]} for k, d in dirs.items()
        ]
    return pd.DataFrame(rows)


def _call(fn, args):
    return fn(*args)


# ------------------------------------------------------------------------------------------------------- accuracy
SCORES_VERSION = 1  # `cache.cached_build` version of per-item greedy scores (`greedy_scores`)


def greedy_scores(cfg, path: str | Path, items) -> np.ndarray:
    """Per-item greedy correctness (0/1) of one checkpoint on `items`, cached by the checkpoint's fingerprint, the
    items, the task and the completion length."""
    key = {
        "checkpoint": cache.dir_fingerprint(path),
        "items": [it.prompt for it in items],
        "task": cfg.task,
        "max_new_tokens": cfg.eval.max_new_tokens,
    }

    def build(tmp: Path) -> dict:
        model, tok = models.load_model(path, cfg.device)
        probe = adaptive.greedy_probe(items, tok, cfg.eval.max_new_tokens, int(cfg.eval.batch_size))
        return {"scores": probe(model.eval()).tolist()}

    return np.asarray(cache.build_info(cache.cached_build("greedy", key, build, SCORES_VERSION))["scores"])


def _effective(method: str, run: Path, steps, fixed: dict) -> list[float]:
    if method == STANDARD:
        return [float(s) for s in steps]
    if method == FIXED:
        return [float(effective_steps(s, fixed["m"], fixed["n"])) for s in steps]
    eff = _record(run)["effective_steps"]
    return [float(eff[str(s)]) for s in steps]


def _record(run: Path) -> dict:
    """The `adaptive.json` of an adaptive run."""
    return json.loads((Path(run) / adaptive.RECORD).read_text())


def item_scores(cfg, runs: pd.DataFrame, items, half: np.ndarray) -> dict[tuple[int, str, int], np.ndarray]:
    """Per-item greedy scores on the `half` items at every checkpoint of every run: {(seed, method, step): 0/1}."""
    out = {}
    for r in runs.itertuples():
        traj = Trajectory(r.dir)
        for s in traj.steps:
            out[(int(r.seed), r.method, int(s))] = greedy_scores(cfg, traj.path(s), items)[half]
    return out


def curves(runs: pd.DataFrame, scores: dict, fixed: dict) -> pd.DataFrame:
    """Accuracy (the mean of `item_scores`) at every checkpoint of every run: seed, label (method), rl_steps,
    effective_steps, accuracy."""
    parts = []
    for r in runs.itertuples():
        steps = sorted(s for seed, m, s in scores if seed == r.seed and m == r.method)
        parts.append(
            pd.DataFrame(
                {
                    "seed": r.seed,
                    "label": r.method,
                    "rl_steps": steps,
                    "effective_steps": _effective(r.method, r.dir, steps, fixed),
                    "accuracy": [float(scores[(r.seed, r.method, s)].mean()) for s in steps],
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def _select_curve(cfg, run: Path, items, select) -> tuple[list[int], list[float]]:
    traj = Trajectory(run)
    return traj.steps, [float(greedy_scores(cfg, traj.path(s), items)[select].mean()) for s in traj.steps]


def _selection_row(steps, acc, target: float) -> dict:
    return {
        "select_target": target,
        "select_steps_to_target": next((s for s, a in zip(steps, acc) if a >= target), math.nan),
        "select_final": acc[-1],
    }


def _select_target(cfg, items, select) -> float:
    """The standard run's (seed rl.seed) final accuracy on the select half: what every candidate must reach."""
    return _select_curve(cfg, training.embedded_trajectory(cfg), items, select)[1][-1]


def choose_fixed(cfg) -> tuple[dict, pd.DataFrame]:
    """The best fixed RL-Extra run among notebook 05's (seed rl.seed), on the `select` half of the held-out items
    (`pick`). Returns the chosen (label, m, n, optimizer) and every candidate's row."""
    items = heldout_items(cfg)
    select, _ = cl.split(len(items), cfg.claims.split_seed)
    target = _select_target(cfg, items, select)
    rows = [
        {"label": r.label, "m": int(r.m), "n": int(r.n), "optimizer": r.optimizer}
        | _selection_row(*_select_curve(cfg, r.dir, items, select), target)
        for r in nb05_rl_extra.train_all(cfg).itertuples()
        if r.label != nb05_rl_extra.STANDARD
    ]
    table = pd.DataFrame(rows)
    table["chosen"] = table.index == pick(table)
    best = table[table.chosen].iloc[0]
    return {"label": best.label, "m": int(best.m), "n": int(best.n), "optimizer": best.optimizer}, table


def choose_policy(cfg) -> tuple[dict, pd.DataFrame]:
    """The adaptive setting among `adaptive.sweep` (each trained at seed rl.seed, two at a time, or reused), chosen
    on the `select` half by the rule that chooses the fixed run (`pick`). Returns the chosen overrides and every
    candidate's row (with its jumps and rollbacks)."""
    items = heldout_items(cfg)
    select, _ = cl.split(len(items), cfg.claims.split_seed)
    target = _select_target(cfg, items, select)
    sweep = [dict(o) for o in cfg.adaptive.sweep] or [{}]
    cfgs = [policy_config(cfg, o) for o in sweep]
    training.in_processes(train_run, [(c,) for c in cfgs if cached_run(c) is None])
    rows = []
    for o, c in zip(sweep, cfgs):
        run = train_run(c)
        rec = _record(run)
        rows.append(
            {"setting": setting_label(o), "overrides": o, "dir": run}
            | _selection_row(*_select_curve(cfg, run, items, select), target)
            | {
                "jumps": len(rec["jumps"]),
                "rollbacks": sum(not j["accepted"] for j in rec["jumps"]),
                "effective_steps": rec["effective_steps"][str(max(map(int, rec["effective_steps"])))],
            }
        )
    table = pd.DataFrame(rows)
    table["chosen"] = table.index == pick(table)
    return dict(table[table.chosen].overrides.iloc[0]), table


def pick(table: pd.DataFrame):
    """The index of the fixed run the rule chooses: fewest `select_steps_to_target` (never reached: last), ties to
    the higher `select_final`, then to the first listed."""
    order = table.assign(_s=table.select_steps_to_target.fillna(math.inf)).sort_values(
        ["_s", "select_final"], ascending=[True, False], kind="stable"
    )
    return order.index[0]


# ------------------------------------------------------------------------------------------------------- analysis
@dataclass
class Analysis:
    """Notebook 08 step by step (`analyse`): `fixed` (the chosen fixed run), `candidates` (its selection sweep),
    `policies` (the adaptive settings' selection sweep, `choose_policy`), `runs`, `curves` (report-half accuracy),
    `scores` (their per-item scores, `item_scores`), `per_seed` (steps to the standard final, probe cost, speedups),
    `budget` (accuracy at equal real steps), `wall` (seconds per run), `decisions` (every adaptive decision),
    `posthoc` (`monitor_vs_posthoc`), `items` (report-half size), `settings`."""

    fixed: dict
    candidates: pd.DataFrame
    policies: pd.DataFrame
    runs: pd.DataFrame
    curves: pd.DataFrame
    scores: dict
    per_seed: pd.DataFrame
    budget: pd.DataFrame
    wall: pd.DataFrame
    decisions: pd.DataFrame
    posthoc: pd.DataFrame
    items: int
    settings: cl.Settings


def _step_seconds(run: Path) -> float:
    """Median wall-clock of one real step of a run (its log.csv; robust to the checkpoint and probe steps)."""
    return float(np.median(np.diff(read_log(run)["seconds"].dropna().to_numpy())))


def _probe_steps(run: Path, upto: float) -> float:
    """Probe seconds of an adaptive run's decisions up to real step `upto`, in equivalent real steps."""
    spent = sum(d.get("probe_seconds", 0.0) for d in _record(run)["decisions"] if d["step"] <= upto)
    return spent / _step_seconds(run)


def _posthoc_runs(runs: pd.DataFrame, policies: pd.DataFrame) -> pd.DataFrame:
    """Every adaptive run: the sweep's (seed rl.seed) and the chosen setting's other seeds."""
    sweep = policies.assign(label=[f"{s} (sweep)" for s in policies.setting])[["label", "dir"]]
    seen = set(sweep.dir.map(str))
    ada = runs[(runs.method == ADAPTIVE) & ~runs.dir.map(str).isin(seen)]
    return pd.concat([sweep, ada.assign(label=[f"seed {s}" for s in ada.seed])[["label", "dir"]]], ignore_index=True)


def analyse(cfg, runs: pd.DataFrame, fixed: dict, candidates: pd.DataFrame, policies: pd.DataFrame) -> Analysis:
    items = heldout_items(cfg)
    _, report = cl.split(len(items), cfg.claims.split_seed)
    settings = cl.Settings.of(cfg)
    scores = item_scores(cfg, runs, items, report)
    c = curves(runs, scores, fixed)
    rows, wall, decisions = [], [], []
    for seed, g in c.groupby("seed", sort=True):
        std = g[g.label == STANDARD].sort_values("rl_steps")
        target = float(std.accuracy.iloc[-1])
        reach = nb05_rl_extra.reach_bounds(g, [target], len(report), settings.level)
        after = nb05_rl_extra._after(g)
        t = f"{target:.3f}"
        row = {"seed": seed, "target": target}
        for m in METHODS:
            r = reach.loc[(m, t)]
            row |= {f"{m} steps": r.steps, f"{m} optimistic": r.optimistic, f"{m} pessimistic": r.pessimistic}
        s = reach.loc[(STANDARD, t)]
        for m in (FIXED, ADAPTIVE):
            r = reach.loc[(m, t)]
            row[f"{m} speedup"] = s.steps / r.steps if min(s.steps, r.steps) > 0 else math.nan
            row[f"{m} speedup low"], row[f"{m} speedup high"] = nb05_rl_extra.speedup_interval(
                s.optimistic, s.pessimistic, r.optimistic, r.pessimistic, after[STANDARD], after[m]
            )
        run = runs[(runs.seed == seed) & (runs.method == ADAPTIVE)].dir.iloc[0]
        upto = row[f"{ADAPTIVE} steps"] if math.isfinite(row[f"{ADAPTIVE} steps"]) else float(cfg.rl.steps)
        row["adaptive probe steps"] = _probe_steps(run, upto)
        row["adaptive net steps"] = row[f"{ADAPTIVE} steps"] + row["adaptive probe steps"]
        rows.append(row)
        rec = _record(run)
        wall.append(
            {
                "seed": seed,
                **{m: float(runs[(runs.seed == seed) & (runs.method == m)].train_seconds.iloc[0]) for m in METHODS},
                "adaptive probe seconds": rec["probe_seconds"],
                "adaptive monitor seconds": rec["monitor_seconds"],
                "adaptive train seconds": rec["seconds"],
                "monitor overhead": rec["monitor_seconds"] / rec["seconds"],
            }
        )
        decisions += [{"seed": seed, **{k: v for k, v in d.items() if k != "candidates"}} for d in rec["decisions"]]
    steps = sorted(set(c.rl_steps))
    budgets = sorted({nearest_step(steps, f * int(cfg.rl.steps)) for f in cfg.adaptive.budgets})
    budget = (
        c[c.rl_steps.isin(budgets)]
        .pivot_table(index="rl_steps", columns="label", values="accuracy", aggfunc="mean")
        .reindex(columns=list(METHODS))
    )
    return Analysis(
        fixed=fixed,
        candidates=candidates,
        policies=policies,
        runs=runs,
        curves=c,
        scores=scores,
        per_seed=pd.DataFrame(rows).set_index("seed"),
        budget=budget,
        wall=pd.DataFrame(wall).set_index("seed"),
        decisions=pd.DataFrame(decisions),
        posthoc=monitor_vs_posthoc(cfg, _posthoc_runs(runs, policies)),
        items=len(report),
        settings=settings,
    )


# ------------------------------------------------------------------------------------------- monitor vs post hoc
POSTHOC_CHECKPOINTS = 3  # checkpoints in a post-hoc window (the fewest a window statistic needs)


def monitor_vs_posthoc(cfg, runs: pd.DataFrame) -> pd.DataFrame:
    """Per adaptive run (`runs`: label, dir), at each checkpoint whose last `POSTHOC_CHECKPOINTS` checkpoints lie in
    one phase (no jump or rollback after the first of them): the live monitor's statistics at that step (its window:
    `adaptive.window` snapshots every `adaptive.every` steps) beside the same statistics computed after the fact from
    those checkpoints on the monitor's own sample (`monitor.window_stats`; notebook 01's R²). The windows overlap but
    differ in span and spacing, so they agree only approximately; on equal windows they are equal
    (`tests/test_monitor.py`)."""
    rows = []
    for r in runs.itertuples():
        rec, traj = _record(r.dir), Trajectory(r.dir)
        live = {h["step"]: h for h in rec["monitor_history"]}
        restarts = [d["step"] for d in rec["decisions"] if d["kind"] in ("jump", "rollback")]
        sketch = LinearityMonitor(  # the adaptive run's own sample (`AdaptiveExtra.from_config`)
            window=int(cfg.adaptive.window),
            **{k: cfg.monitor[k] for k in ("fraction", "min_samples", "budget_mb")},
            seed=int(cfg.seed),
        )
        names = [n for n in traj.names if n.endswith(".weight")]
        sketch.plan({n: traj.numel(n) for n in names})
        series = np.concatenate([traj.series(n, sketch.index[n], dtype=torch.float32).numpy() for n in names], axis=1)
        dtypes = [traj.dtype(n) for n in names]
        ends = np.cumsum([len(sketch.index[n]) for n in names])
        for i in range(POSTHOC_CHECKPOINTS - 1, len(traj.steps)):
            window = list(range(i - POSTHOC_CHECKPOINTS + 1, i + 1))
            first, step = traj.steps[window[0]], traj.steps[i]
            if any(first < t <= step for t in restarts) or step not in live:
                continue
            y = series[window]
            moved = np.zeros(y.shape[1], dtype=bool)
            for a, b, dt in zip(np.r_[0, ends[:-1]], ends, dtypes):
                moved[a:b] = moved_mask(y[:, a:b], dt)
            post = window_stats(list(y), [traj.steps[j] for j in window], moved)
            rows += [
                {"run": r.label, "step": step, "statistic": k, "live": live[step][k], "post hoc": post[k]} for k in post
            ]
    return pd.DataFrame(rows, columns=["run", "step", "statistic", "live", "post hoc"])


def agreement(compare: pd.DataFrame) -> pd.DataFrame:
    """Per statistic: windows compared, median live and post-hoc values, median |live − post hoc|."""
    g = compare.assign(gap=(compare["live"] - compare["post hoc"]).abs()).groupby("statistic")
    return pd.DataFrame(
        {
            "windows": g.size(),
            "live": g["live"].median(),
            "post hoc": g["post hoc"].median(),
            "median |gap|": g.gap.median(),
        }
    )


def plot_monitor_vs_posthoc(compare: pd.DataFrame):
    """Live monitor statistics (dots) vs post-hoc ones from the checkpoints (circles), one panel per statistic."""
    stats = list(dict.fromkeys(compare.statistic))
    fig, axes = plt.subplots(1, max(len(stats), 1), figsize=(4.2 * max(len(stats), 1), 3.6), squeeze=False)
    for ax, stat in zip(axes[0], stats):
        for i, (run, g) in enumerate(compare[compare.statistic == stat].groupby("run", sort=False)):
            ax.plot(g.step, g["live"], ".", color=f"C{i}", ms=4, label=f"{run}: live")
            ax.plot(g.step, g["post hoc"], "o", mfc="none", color=f"C{i}", ms=5, label=f"{run}: post hoc")
        ax.set(title=stat, xlabel="real RL steps")
    if len(compare):
        axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------------- plots
STYLE = {STANDARD: dict(color="k", lw=2), FIXED: dict(color="C0"), ADAPTIVE: dict(color="C3")}


def plot_curves(a: Analysis):
    """Report-half accuracy vs real RL steps (left) and vs effective steps (right): each method's mean over seeds
    (thick) and its seeds (thin); dotted: the standard runs' mean final accuracy (the target)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for m in METHODS:
        g = a.curves[a.curves.label == m]
        label = f"{m} ({a.fixed['label']})" if m == FIXED else m
        for ax, x in zip(axes, ("rl_steps", "effective_steps")):
            for _, s in g.groupby("seed"):
                ax.plot(s[x], s.accuracy, alpha=0.3, lw=0.8, **{k: v for k, v in STYLE[m].items() if k != "lw"})
            if x == "rl_steps":
                mean = g.groupby("rl_steps").accuracy.mean()
                ax.plot(mean.index, mean.values, label=label, marker="o", ms=3, **{"lw": 2, **STYLE[m]})
    for ax in axes:
        ax.axhline(a.per_seed.target.mean(), color="gray", ls=":", lw=1)
    axes[0].set(xlabel="real RL steps", ylabel=f"held-out accuracy (greedy, {a.items} items)", title="vs real steps")
    axes[1].set(xlabel="effective steps (RL + extrapolated)", title="vs effective steps (thin: seeds)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_decisions(a: Analysis):
    """Per seed, the adaptive run's window statistics over real steps with its gate thresholds (dashed; from its
    `adaptive.json`), and its jumps (vertical lines labelled β; dashed = rolled back)."""
    seeds = sorted(a.runs.seed.unique())
    fig, axes = plt.subplots(len(seeds), 1, figsize=(12, 2.6 * len(seeds)), sharex=True, squeeze=False)
    names = {"weight_r2_median": "min_weight_r2", "rank1_ev": "min_rank1_ev", "cosine": "min_cosine"}
    for ax, seed in zip(axes[:, 0], seeds):
        run = a.runs[(a.runs.seed == seed) & (a.runs.method == ADAPTIVE)].dir.iloc[0]
        rec = _record(run)
        hist = pd.DataFrame(rec["monitor_history"])
        for i, (stat, knob) in enumerate(names.items()):
            if len(hist):
                ax.plot(hist.step, hist[stat], ".", ms=3, color=f"C{i}", label=stat)
            ax.axhline(rec["knobs"][knob], color=f"C{i}", ls="--", lw=0.8)
        for j in rec["jumps"]:
            ax.axvline(j["step"], color="k", lw=1, ls="-" if j["accepted"] else "--")
            ax.annotate(f"β={j['beta']:g}", (j["step"], 1.0), fontsize=8, rotation=90, va="top", ha="right")
        ax.set(ylabel=f"seed {seed}", ylim=(min(0.0, float(hist.cosine.min()) if len(hist) else 0.0), 1.02))
    axes[0, 0].legend(fontsize=8, ncol=3, loc="lower right")
    axes[-1, 0].set(xlabel="real RL steps")
    axes[0, 0].set_title("Adaptive runs: window statistics, gates (dashed) and jumps")
    fig.tight_layout()
    return fig


def decision_counts(a: Analysis) -> pd.DataFrame:
    """Per seed, how many decisions of each kind the adaptive run took (holds split by reason: the linearity gate,
    or no β left under the cap after rollbacks)."""
    d = a.decisions
    reasons = d["reason"] if "reason" in d else [None] * len(d)
    kinds = [k if k != "hold" else f"hold ({r})" for k, r in zip(d.kind, reasons)]
    return d.assign(kind=kinds).pivot_table(index="seed", columns="kind", values="step", aggfunc="count", fill_value=0)


# --------------------------------------------------------------------------------------------------------- claims
def _mean_or_nan(values) -> float:
    values = [float(v) for v in values]
    return float(np.mean(values)) if values and all(math.isfinite(v) for v in values) else math.nan


def third_step(steps) -> int:
    """The last checkpoint at or before a third of the run's last step: the budget of the goal."""
    return max(s for s in steps if s <= max(steps) / 3)


def _paired(a: Analysis, pairs) -> tuple[float, tuple[float, float]]:
    """Mean over items of the mean over seeds of score(x) − score(y), `pairs` = [(seed, x key, y key)], with a
    bootstrap interval over items (items are the unit of noise; the seeds are kept together)."""
    d = np.mean([a.scores[(seed, *x)] - a.scores[(seed, *y)] for seed, x, y in pairs], axis=0)
    return float(d.mean()), cl.bootstrap_mean(d, a.settings.level, a.settings.bootstrap)


def _goal_claim(a: Analysis) -> cl.Claim:
    steps = sorted(set(a.curves.rl_steps))
    third, last = third_step(steps), max(steps)
    seeds = sorted(a.per_seed.index)
    point, interval = _paired(a, [(s, (ADAPTIVE, third), (STANDARD, last)) for s in seeds])
    m = a.settings.accuracy_margin
    p = a.per_seed
    at_third = a.curves[(a.curves.label == ADAPTIVE) & (a.curves.rl_steps == third)].accuracy.mean()
    per_seed = "; ".join(
        f"seed {s}: standard {r[f'{STANDARD} steps']:g}, adaptive {r[f'{ADAPTIVE} steps']:g} "
        f"(+{r['adaptive probe steps']:.1f} probe)"
        for s, r in p.iterrows()
    )
    detail = (
        f"accuracy at step {third}: adaptive {at_third:.3f}, standard at step {last}: {p.target.mean():.3f}; "
        f"real steps to the standard final: {per_seed}"
    )
    how = (
        f"adaptive at step {third} (the last checkpoint ≤ 1/3 of {last}) minus standard at step {last}, per item "
        f"(mean over {len(seeds)} seeds), bootstrap over {a.items} report-half items; holds when the interval lies "
        f"above −{m:g} (the accuracy margin), fails when it lies below 0"
    )
    return cl.Claim(
        "nb08.adaptive_speedup",
        "after 1/3 of the real RL steps the adaptive run scores standard GRPO's final accuracy (speedup ≥ 3)",
        paper.get("adaptive_speedup"),
        point,
        interval,
        cl.above(-m, m),
        how,
        detail,
    )


def _vs_fixed_claim(a: Analysis) -> cl.Claim:
    budgets = [int(b) for b in a.budget.index if b > 0]
    seeds = sorted(a.per_seed.index)
    point, interval = _paired(a, [(s, (ADAPTIVE, b), (FIXED, b)) for s in seeds for b in budgets])
    probe = a.per_seed["adaptive probe steps"]
    detail = (
        "; ".join(
            f"step {b}: adaptive {r[ADAPTIVE]:.3f}, best fixed {r[FIXED]:.3f}"
            for b, r in a.budget.loc[budgets].iterrows()
        )
        + f"; probes cost {probe.min():.1f}–{probe.max():.1f} real-step equivalents per run (not charged here)"
    )
    how = (
        f"adaptive minus the best fixed run ({a.fixed['label']}, chosen on the other half of the held-out items) at "
        f"the real-step budgets {budgets}, per item (mean over budgets and {len(seeds)} seeds), bootstrap over "
        f"{a.items} report-half items"
    )
    return cl.Claim(
        "nb08.adaptive_vs_fixed",
        "at equal real-step budgets the adaptive run scores higher than the best fixed RL-Extra (m, n)",
        paper.get("adaptive_vs_fixed"),
        point,
        interval,
        cl.above(0.0, a.settings.accuracy_margin),
        how,
        detail,
    )


def claims(a: Analysis) -> list[cl.Claim]:
    return [_goal_claim(a), _vs_fixed_claim(a)]


def results(a: Analysis) -> dict:
    """The measured numbers of notebook 08 for results/08_adaptive.json (the claims are added by run.save_results)."""
    p = a.per_seed
    num = lambda x: float(x) if x is not None and math.isfinite(x) else None  # noqa: E731
    std, fixed, ada = (_mean_or_nan(p[f"{m} steps"]) for m in METHODS)
    jumps = []
    for r in a.runs[a.runs.method == ADAPTIVE].itertuples():
        jumps += [{"seed": int(r.seed), **j} for j in _record(r.dir)["jumps"]]
    return dict(
        standard_steps_to_final=num(std),
        fixed_best_steps_to_final=num(fixed),
        adaptive_steps_to_final=num(ada),
        adaptive_speedup=num(_mean_or_nan(p[f"{ADAPTIVE} speedup"])),
        fixed_best_speedup=num(_mean_or_nan(p[f"{FIXED} speedup"])),
        adaptive_net_steps_to_final=num(_mean_or_nan(p["adaptive net steps"])),
        monitor_overhead_fraction=num(float(a.wall["monitor overhead"].mean())),
        monitor_vs_posthoc=[{"statistic": k, **r} for k, r in agreement(a.posthoc).to_dict("index").items()],
        jumps=jumps,
        fixed_best=a.fixed,
        fixed_candidates=a.candidates.to_dict("records"),
        adaptive_setting=next(iter(a.policies[a.policies.chosen].setting), None),
        adaptive_candidates=a.policies.drop(columns=["overrides", "dir"]).to_dict("records"),
        per_seed=[{"seed": int(s), **{k: num(float(v)) for k, v in r.items()}} for s, r in p.iterrows()],
        budget=[{"rl_steps": int(s), **{m: num(float(v)) for m, v in r.items()}} for s, r in a.budget.iterrows()],
        wall_seconds=[{"seed": int(s), **{k: float(v) for k, v in r.items()}} for s, r in a.wall.iterrows()],
        heldout_items=a.items,
        interval_level=a.settings.level,
        curves=a.curves.to_dict("records"),
    )
