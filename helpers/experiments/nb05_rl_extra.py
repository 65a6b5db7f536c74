"""Notebook 05, RL-Extra (LIN §4.3): standard GRPO (the embedded run) vs RL-Extra runs (`helpers.lib.rl_extra.RLExtra`);
steps to target accuracies, accuracy at fixed RL budgets, optimizer state reset vs keep.

`plan` scales the paper's (m, n) settings to this run, `train_run` / `train_all` build (or reuse) the RL-Extra runs,
`analyse` gathers the tables, `claims` decides (Wilson intervals of the logged accuracies), `results` stores them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from helpers.experiments import claims as cl
from helpers.experiments import paper
from helpers.experiments.training_log import read_log
from helpers.lib import cache, training
from helpers.lib.rl_extra import OPTIMIZER_POLICIES, RLExtra, effective_steps
from helpers.lib.runs import heldout_items
from helpers.lib.trajectory import nearest_step

VERSION = 1  # `cache.cached_build` version of the RL-Extra runs (`train_run`)

STANDARD = "standard"


def scaled(cfg, paper_steps: float) -> int:
    """A step count of the paper's run mapped onto this run: × rl.steps / rl_extra.paper_steps (null: the paper's run
    length, `paper.get("rl_extra_paper_steps")`), rounded."""
    length = cfg.rl_extra.paper_steps
    length = paper.get("rl_extra_paper_steps").value if length is None else length
    return int(round(float(paper_steps) * int(cfg.rl.steps) / float(length)))


def plan(cfg) -> list[dict]:
    """The RL-Extra runs: each (m, n) of `rl_extra.configs` scaled to this run (m ≥ 1, n ≥ 1 unless 0) with the
    `optimizer` policy, plus the `ablation` config with the other policy. Labels name (m, n) and the policy."""
    rx = cfg.rl_extra
    mn = [(max(1, scaled(cfg, m)), max(1 if n else 0, scaled(cfg, n))) for m, n in rx.configs]
    runs = [{"m": m, "n": n, "optimizer": rx.optimizer} for m, n in dict.fromkeys(mn)]
    if rx.ablation is not None:
        if not 0 <= int(rx.ablation) < len(mn):
            raise ValueError(f"{cfg.source}: rl_extra.ablation = {rx.ablation} is not an index into rl_extra.configs")
        other = next(p for p in OPTIMIZER_POLICIES if p != rx.optimizer)
        runs.append({"m": mn[int(rx.ablation)][0], "n": mn[int(rx.ablation)][1], "optimizer": other})
    for r in runs:
        r.update(label=f"RL-Extra({r['m']},{r['n']}) {r['optimizer']}", beta=(r["m"] + r["n"]) / r["m"])
    return runs


def _key(cfg, m: int, n: int, optimizer: str) -> dict:
    """What an RL-Extra run is cached by: the embedded run's sections (`training.run_key`), m, n, norms, optimizer."""
    return training.run_key(cfg, ("task", "model", "sft", "rl", "eval")) | {
        "m": int(m),
        "n": int(n),
        "norms": cfg.rl_extra.norms,
        "optimizer": optimizer,
    }


def cached_run(cfg, m: int, n: int, optimizer: str) -> Path | None:
    """The RL-Extra(m, n) run of `cfg` when it is already built (`train_run` would not train), else None."""
    return cache.cached("rl_extra", _key(cfg, m, n, optimizer), VERSION)


def train_run(cfg, m: int, n: int, optimizer: str) -> Path:
    """One RL-Extra(m, n) run with the rl section's settings from `base_model(cfg)`, cached under
    outputs/cache/rl_extra-v<VERSION>-<hash>/ (key: task, model, sft, rl, eval, seed, device, m, n, norms, optimizer);
    `build.json` records m, n, optimizer, norms and its training seconds."""
    base = training.base_model(cfg)

    def build(tmp: Path) -> dict:
        training.train_rl(cfg, tmp, callbacks=[RLExtra(m, n, cfg.rl_extra.norms, optimizer)], base_dir=base)
        return {"m": int(m), "n": int(n), "optimizer": optimizer, "norms": cfg.rl_extra.norms}

    return cache.cached_build("rl_extra", _key(cfg, m, n, optimizer), build, VERSION)


def train_all(cfg):
    """Every run of `plan(cfg)` (trained or reused) plus the standard one, as a table: label, m, n, β, optimizer,
    dir, train_seconds."""
    std = training.embedded_trajectory(cfg)
    missing = [
        (cfg, r["m"], r["n"], r["optimizer"])
        for r in plan(cfg)
        if cached_run(cfg, r["m"], r["n"], r["optimizer"]) is None
    ]
    training.in_processes(train_run, missing)  # two at a time, one thread each
    rows = [{"label": STANDARD, "m": None, "n": 0, "optimizer": None, "beta": 1.0, "dir": std}]
    rows += [{**r, "dir": train_run(cfg, r["m"], r["n"], r["optimizer"])} for r in plan(cfg)]
    for r in rows:
        r["train_seconds"] = cache.build_info(r["dir"])["seconds"]
    return pd.DataFrame(rows)


def curves(runs):
    """Held-out greedy accuracy at every checkpoint of every run (from log.csv): label, rl_steps, effective_steps,
    accuracy."""
    parts = []
    for r in runs.itertuples():
        log = read_log(r.dir).dropna(subset=["heldout_accuracy"])
        steps = log["step"].astype(int)
        parts.append(
            pd.DataFrame(
                {
                    "label": r.label,
                    "rl_steps": steps,
                    "accuracy": log["heldout_accuracy"],
                    "effective_steps": [s if r.label == STANDARD else effective_steps(s, r.m, r.n) for s in steps],
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def targets(curves, fractions) -> list[float]:
    """Accuracy targets base + f × (best − base) of the standard run's curve."""
    std = curves[curves.label == STANDARD].sort_values("rl_steps")
    base, best = float(std.accuracy.iloc[0]), float(std.accuracy.max())
    return [round(base + float(f) * (best - base), 6) for f in fractions]


def steps_to_target(curves, goals, column: str = "accuracy"):
    """RL steps of the first checkpoint whose `column` is at or above each target, per run (NaN: never reached);
    rows = runs, columns = the targets as text (`0.523`)."""
    rows = {}
    for label, g in curves.groupby("label", sort=False):
        g = g.sort_values("rl_steps")
        rows[label] = {
            f"{t:.3f}": next((float(s) for s, a in zip(g.rl_steps, g[column]) if a >= t - 1e-9), math.nan)
            for t in goals
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def fixed_budget(cfg, curves):
    """Accuracy at equal real RL steps: the paper's budgets scaled to this run, snapped to the standard run's
    checkpoints; per budget the standard run, the best RL-Extra run (`optimizer` policy) and every run."""
    saved = sorted(set(curves[curves.label == STANDARD].rl_steps) - {0})
    budgets = sorted({nearest_step(saved, scaled(cfg, b)) for b in cfg.rl_extra.budgets})
    wide = curves.pivot_table(index="rl_steps", columns="label", values="accuracy")
    main = _main_runs(cfg, wide.columns)
    rows = []
    for b in budgets:
        at = wide.loc[b] if b in wide.index else pd.Series(dtype=float)
        extra = at.reindex(main).dropna()
        best = extra.idxmax() if len(extra) else None
        rows.append(
            {
                "rl_steps": b,
                "standard": at.get(STANDARD, math.nan),
                "rl_extra": extra.get(best, math.nan),
                "rl_extra_config": best,
                "gain": extra.get(best, math.nan) - at.get(STANDARD, math.nan),
                **{c: at.get(c) for c in wide.columns if c != STANDARD},
            }
        )
    return pd.DataFrame(rows)


def optimizer_ablation(runs, curves):
    """Reset vs keep side by side for the (m, n) run with both policies: accuracy per checkpoint (empty if none)."""
    twins = runs.dropna(subset=["m"]).groupby(["m", "n"]).filter(lambda g: len(g) == 2)
    if twins.empty:
        return None
    sub = curves[curves.label.isin(twins.label)]
    wide = sub.pivot_table(index="rl_steps", columns="label", values="accuracy")
    by_policy = {r.optimizer: r.label for r in twins.itertuples()}
    table = wide.rename(columns={v: k for k, v in by_policy.items()})[list(OPTIMIZER_POLICIES)]
    table.columns.name = f"RL-Extra({int(twins.m.iloc[0])},{int(twins.n.iloc[0])})"
    table["reset − keep"] = table["reset"] - table["keep"]
    return table


def plot_curves(curves, goals=()):
    """Held-out accuracy vs real RL steps (left; targets dotted) and vs effective steps (right), one line per run."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for i, (label, g) in enumerate(curves.groupby("label", sort=False)):
        g = g.sort_values("rl_steps")
        style = (
            dict(color="k", lw=2, marker="o", ms=3, zorder=5)
            if label == STANDARD
            else dict(color=f"C{i}", marker="s", ms=3, ls="--" if "keep" in label else "-")
        )
        for ax, x in zip(axes, ("rl_steps", "effective_steps")):
            ax.plot(g[x], g.accuracy, label=label, **style)
    for t in goals:
        axes[0].axhline(t, color="gray", ls=":", lw=1)
    axes[0].set(xlabel="real RL steps", ylabel="held-out accuracy (greedy)", title="Accuracy vs RL steps")
    axes[1].set(xlabel="effective steps (RL + extrapolated)", title="Accuracy vs effective steps")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def _main_runs(cfg, labels) -> list[str]:
    """The RL-Extra runs with the `rl_extra.optimizer` policy (the ablation twin excluded)."""
    return [lab for lab in labels if lab != STANDARD and lab.endswith(f" {cfg.rl_extra.optimizer}")]


def logged_items(cfg) -> int:
    """Held-out problems behind each logged accuracy: the first `eval.heldout_during_training` of the held-out set
    (`helpers.lib.training` scores those at every checkpoint)."""
    return min(int(cfg.eval.heldout_during_training), len(heldout_items(cfg)))


def reach_bounds(curves, goals, items: int, level: float):
    """Steps to each target per run with the range the accuracy noise allows, indexed by (run, target): `steps` = the
    first checkpoint at or above it, `optimistic` = the first whose upper Wilson bound (`items` problems, `level`)
    reaches it, `pessimistic` = the first whose lower bound does (NaN: never)."""
    low, high = zip(*(cl.binomial_interval(p, items, level) for p in curves.accuracy))
    c = curves.assign(low=low, high=high)
    wide = {
        "steps": steps_to_target(c, goals),
        "optimistic": steps_to_target(c, goals, "high"),
        "pessimistic": steps_to_target(c, goals, "low"),
    }
    rows = [
        {"run": run, "target": t, **{k: float(w.at[run, t]) for k, w in wide.items()}}
        for run in wide["steps"].index
        for t in wide["steps"].columns
    ]
    return pd.DataFrame(rows).set_index(["run", "target"])


def speedup_interval(
    std_opt: float, std_pess: float, rx_opt: float, rx_pess: float, std_after: float, rx_after: float
) -> tuple[float, float]:
    """Bounds of standard steps / RL-Extra steps to one target from each run's optimistic … pessimistic steps:
    [std_opt / rx_pess, std_pess / rx_opt]. A run that never reaches the target (NaN) would reach it at the earliest
    at the checkpoint after its last one (`*_after`): RL-Extra never reaching it pessimistically gives the lower bound
    0, never optimistically the upper bound std_pess / rx_after; the standard run never reaching it optimistically
    gives the lower bound std_after / rx_pess, never pessimistically no upper bound (∞), as does RL-Extra reaching it
    optimistically at step 0."""
    reached = math.isfinite
    lo = (std_opt if reached(std_opt) else std_after) / rx_pess if reached(rx_pess) and rx_pess > 0 else 0.0
    hi = std_pess / (rx_opt if reached(rx_opt) else rx_after) if reached(std_pess) and rx_opt != 0 else math.inf
    return float(lo), float(hi)


def _after(curves) -> dict:
    """Per run, the checkpoint that would follow its last one (last + the last spacing)."""
    out = {}
    for label, g in curves.groupby("label"):
        s = sorted(set(g.rl_steps))
        out[label] = float(s[-1] + (s[-1] - s[-2] if len(s) > 1 else 1))
    return out


def speed_bounds(curves, reach, upper):
    """Per RL-Extra run and target, indexed by (run, target): the point speedup (standard steps / RL-Extra steps;
    NaN when either never reaches the target or needs 0 steps), its `low` … `high` bounds (`speedup_interval`) and
    `informative`: an upper target whose standard crossing the noise brackets inside the run (optimistic > 0 and
    pessimistic reached; the `nb05.speedup` claim uses these, or, when there are none, every upper target with an
    unbounded interval)."""
    after, std = _after(curves), reach.loc[STANDARD]
    rows = []
    for (run, t), r in reach.drop(index=STANDARD, level="run").iterrows():
        s = std.loc[t]
        point = s.steps / r.steps if min(s.steps, r.steps) > 0 else math.nan  # NaN compares False
        lo, hi = speedup_interval(s.optimistic, s.pessimistic, r.optimistic, r.pessimistic, after[STANDARD], after[run])
        informative = t in upper and s.optimistic > 0 and math.isfinite(s.pessimistic)
        rows.append(
            {
                "run": run,
                "target": t,
                "speedup": point,
                "low": lo,
                "high": hi,
                "upper": t in upper,
                "informative": informative,
            }
        )
    return pd.DataFrame(rows).set_index(["run", "target"])


@dataclass
class Analysis:
    """Notebook 05 step by step (`analyse`): `runs` (train_all), `curves` (accuracy per checkpoint), `goals`
    (accuracy targets), `reach` (steps to each target with their noise range), `speed` (speedups with intervals),
    `budget` (accuracy at equal RL steps), `ablation` (reset vs keep, None without a twin); `main` = the runs with the
    `rl_extra.optimizer` policy, `items` the held-out problems behind each accuracy, `speed_level` the Bonferroni level
    of `reach` and `speed` (best of main runs × upper targets)."""

    runs: object
    curves: object
    goals: list
    reach: object
    speed: object
    budget: object
    ablation: object
    main: list
    items: int
    settings: cl.Settings
    steps: int
    speed_level: float


def _upper(goals) -> list[str]:
    """The targets the paper measures its speedups at: all but the lowest (its middle and top targets)."""
    names = list(dict.fromkeys(f"{t:.3f}" for t in goals))
    return names[1:] or names


def analyse(cfg, runs, table=None) -> Analysis:
    """Everything notebook 05 shows and claims, from `train_all`'s runs (their accuracy curves read from log.csv, or
    `table`: a `curves`-like frame)."""
    c = curves(runs) if table is None else table
    goals = targets(c, cfg.rl_extra.target_fractions)
    main = _main_runs(cfg, c.label.unique())
    settings, items = cl.Settings.of(cfg), logged_items(cfg)
    level = cl.bonferroni(settings.level, len(main) * len(_upper(goals)))
    reach = reach_bounds(c, goals, items, level)
    return Analysis(
        runs=runs,
        curves=c,
        goals=goals,
        reach=reach,
        speed=speed_bounds(c, reach, _upper(goals)),
        budget=fixed_budget(cfg, c),
        ablation=optimizer_ablation(runs, c),
        main=main,
        items=items,
        settings=settings,
        steps=int(cfg.rl.steps),
        speed_level=level,
    )


def _known(x) -> bool:
    return x is not None and math.isfinite(x)


def _gap(p: float, q: float, items: int, level: float) -> tuple[float, tuple[float, float]]:
    """p − q of two accuracies on `items` problems: Wilson intervals combined as independent (claims.difference)."""
    return cl.difference(p, cl.binomial_interval(p, items, level), q, cl.binomial_interval(q, items, level))


def _extreme(gaps: dict, worst: bool = False) -> tuple[float, tuple[float, float]]:
    """The best (or worst) of several differences and its interval: [max low, max high] ([min low, min high]), which
    holds when every difference's interval does (hence their Bonferroni level)."""
    if not gaps:
        return math.nan, (math.nan, math.nan)
    pick = min if worst else max
    return (
        pick(d for d, _ in gaps.values()),
        (pick(lo for _, (lo, _) in gaps.values()), pick(hi for _, (_, hi) in gaps.values())),
    )


def _detail(gaps: dict) -> str:
    return "; ".join(f"{lab}: {d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for lab, (d, (lo, hi)) in gaps.items())


_INDEPENDENT = (
    "Wilson intervals of the two runs combined as independent (claims.difference), though both are scored "
    "on the same items"
)


def _best_speedup(a: Analysis):
    """The (main run × informative upper target) pairs and the best point speedup among them: (pairs, value, run,
    target)."""
    speed = a.speed[a.speed.index.get_level_values("run").isin(a.main)]
    pairs = speed[speed.informative] if speed.informative.any() else speed[speed.upper]
    if pairs.speedup.notna().any():
        run, t = pairs.speedup.idxmax()
        return pairs, float(pairs.speedup.max()), run, t
    return pairs, math.nan, None, None


def _speedup_claim(a: Analysis) -> cl.Claim:
    pairs, best, _, _ = _best_speedup(a)
    if len(pairs):
        interval = (float(pairs.low.max()), float(pairs.high.max()))
        unsure = (
            ""
            if pairs.informative.any()
            else "the standard run reaches no upper target beyond its accuracy "
            "noise, so the speedup has no upper bound; "
        )
        detail = unsure + "; ".join(
            f"{run} at {t}: "
            + ("never reached" if r.speedup != r.speedup else f"{r.speedup:.2f}×")
            + f" [{r.low:.2f}, {r.high:.2f}]"
            for (run, t), r in pairs.iterrows()
        )
    else:
        interval, detail = (math.nan, math.nan), "no upper target"
    k = len(a.main) * len(_upper(a.goals))
    how = (
        f"steps to a target lie between the first checkpoints whose upper / lower Wilson bound ({a.items} items) "
        f"reaches it; speedup in [standard optimistic / RL-Extra pessimistic, standard pessimistic / RL-Extra "
        f"optimistic] (∞ when the standard run never surely reaches it); best of {k} (main run, upper target) "
        f"pairs, Bonferroni level {a.speed_level:.4f}; targets the standard run surely crosses, when it has any"
    )
    return cl.Claim(
        "nb05.speedup",
        "RL-Extra reaches the upper accuracy targets in fewer RL steps than standard RL (best speedup)",
        paper.get("rl_extra_speedup"),
        best,
        interval,
        cl.above(1),
        how,
        detail,
    )


def _budget_claims(a: Analysis) -> list[cl.Claim]:
    level = cl.bonferroni(a.settings.level, len(a.main))
    how = f"best of {len(a.main)} main runs − standard, Bonferroni level {level:.4f}; {_INDEPENDENT}"
    out = []
    for rec in a.budget.to_dict("records"):
        b = int(rec["rl_steps"])
        gaps = {
            lab: _gap(rec[lab], rec["standard"], a.items, level)
            for lab in a.main
            if _known(rec.get(lab)) and _known(rec["standard"])
        }
        d, interval = _extreme(gaps)
        out.append(
            cl.Claim(
                f"nb05.budget_{b}",
                f"at {b} of {a.steps} RL steps the best RL-Extra run beats standard RL",
                paper.get("rl_extra_budget"),
                d,
                interval,
                cl.above(0, a.settings.accuracy_margin),
                how,
                _detail(gaps),
            )
        )
    return out


def _finals(a: Analysis) -> dict:
    """The last checkpoint's accuracy of every run."""
    return a.curves.sort_values("rl_steps").groupby("label", sort=False).accuracy.last().astype(float).to_dict()


def _on_track_claim(a: Analysis) -> cl.Claim:
    last = _finals(a)
    level = cl.bonferroni(a.settings.level, len(a.main))
    gaps = {lab: _gap(last[lab], last[STANDARD], a.items, level) for lab in a.main}
    d, interval = _extreme(gaps, worst=True)
    return cl.Claim(
        "nb05.on_track",
        "the worst RL-Extra run ends no worse than standard RL (final accuracy difference)",
        paper.get("rl_extra_on_track"),
        d,
        interval,
        cl.above(-a.settings.accuracy_margin),
        f"worst of {len(a.main)} main runs − standard at the last checkpoint, Bonferroni level "
        f"{level:.4f}; {_INDEPENDENT}",
        _detail(gaps),
    )


def _optimizer_claim(a: Analysis) -> cl.Claim:
    t = a.ablation.drop(index=0, errors="ignore").dropna(subset=["reset", "keep"])
    gaps = [_gap(r, k, a.items, a.settings.level) for r, k in zip(t["reset"], t["keep"])]
    if gaps:
        d = sum(g for g, _ in gaps) / len(gaps)
        interval = (
            d - math.sqrt(sum((g - lo) ** 2 for g, (lo, _) in gaps)) / len(gaps),
            d + math.sqrt(sum((hi - g) ** 2 for g, (_, hi) in gaps)) / len(gaps),
        )
    else:
        d, interval = math.nan, (math.nan, math.nan)
    return cl.Claim(
        "nb05.optimizer_reset_vs_keep",
        f"resetting Adam's moments after each extrapolation beats keeping "
        f"them ({a.ablation.columns.name}, mean over checkpoints of reset − keep)",
        paper.get("rl_extra_optimizer"),
        d,
        interval,
        cl.above(0, a.settings.accuracy_margin),
        f"mean of {len(gaps)} per-checkpoint differences; Wilson intervals ({a.items} items) combined in "
        f"quadrature, runs and checkpoints treated as independent, though the same items are scored at "
        f"every checkpoint",
    )


def claims(a: Analysis) -> list[cl.Claim]:
    """Paper vs measured for LIN §4.3: `nb05.speedup`, `nb05.budget_<steps>` per budget, `nb05.on_track` and, with
    the ablation twin, `nb05.optimizer_reset_vs_keep`. Accuracies come from the training logs (greedy, `a.items`
    problems, means only), so every interval is binomial (Wilson); a best or worst of K runs (× targets) is decided on
    intervals at the Bonferroni level for K. Speedup: a run's steps to a target lie between the first checkpoint whose
    upper Wilson bound reaches it (optimistic) and the first whose lower bound does (pessimistic), so the speedup lies
    in [standard optimistic / RL-Extra pessimistic, standard pessimistic / RL-Extra optimistic] (`speedup_interval`).
    Differences of two runs treat them as independent (`claims.difference`)."""
    out = [_speedup_claim(a), *_budget_claims(a), _on_track_claim(a)]
    return out + ([_optimizer_claim(a)] if a.ablation is not None else [])


def results(a: Analysis) -> dict:
    """The measured numbers of notebook 05 for results/05_rl_extra.json (the claims are added by run.save_results)."""
    std = a.curves[a.curves.label == STANDARD].sort_values("rl_steps")
    num = lambda x: float(x) if math.isfinite(x) else None  # noqa: E731
    _, best, best_run, best_target = _best_speedup(a)
    out = dict(
        standard_final_accuracy=float(std.accuracy.iloc[-1]),
        standard_final_step=int(std.rl_steps.iloc[-1]),
        targets=list(a.goals),
        steps_to_target=_nested(a.reach.steps, int),
        speedups=_nested(a.speed.speedup, float),
        best_speedup=num(best),
        best_speedup_config=best_run,
        best_speedup_target=best_target,
        fixed_budget=[
            {
                "rl_steps": int(r["rl_steps"]),
                "standard": r["standard"],
                "rl_extra": r["rl_extra"],
                "rl_extra_config": r["rl_extra_config"],
            }
            for r in a.budget.to_dict("records")
        ],
        fixed_budget_mean_gain=num(float(a.budget.gain.mean())),
        final_accuracy=_finals(a),
        heldout_items=a.items,
        interval_level=a.settings.level,
        runs=[
            {
                "label": r.label,
                "m": int(r.m),
                "n": int(r.n),
                "beta": float(r.beta),
                "optimizer": r.optimizer,
                "train_seconds": float(r.train_seconds),
                "final_effective_steps": effective_steps(a.steps, r.m, r.n),
            }
            for r in a.runs.dropna(subset=["m"]).itertuples()
        ],
        curves=a.curves.to_dict("records"),
    )
    if a.ablation is not None:
        diff = a.ablation["reset − keep"].drop(index=0, errors="ignore")
        out.update(reset_minus_keep_mean=float(diff.mean()), reset_minus_keep_final=float(diff.iloc[-1]))
    return out


def _nested(column, cast) -> dict:
    """{run: {target: value or None}} of a (run, target)-indexed column."""
    return {
        run: {t: (None if v != v else cast(v)) for (_, t), v in g.items()}
        for run, g in column.groupby(level="run", sort=False)
    }
