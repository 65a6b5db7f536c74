"""LIN v3 Fig. 2 at CPU scale: does training stay linear across algorithms, learning rates, rollouts, optimizers and
model sizes — and is SFT less linear? One-factor-at-a-time runs around one params file, each analysed by notebooks
00–02 through the batch runner; notebook 07 only reads their results.

    python -m helpers.pipeline.robustness params/default.yaml [--profile smoke] [--force] [--out DIR]

The design is the params file's `robustness.settings`, a list of
{factor, value (a label), overrides: {dotted knob: value}, scale: {dotted knob: factor}, trajectory: rl | sft}:

- `overrides` set knobs; `rl.lr: origin.sgd_lr` is notebook 03's SGD lr (`helpers.experiments.nb03_origin.Study.sgd_lr`: the
  `origin.sgd_lr` number, or with `auto` the lr matched to the reference AdamW run's measured step length);
- `scale` multiplies this params file's value (rounded to 4 significant digits like notebook 03's lr scales, so the
  two notebooks share their cached runs), so the design follows the default;
- `trajectory: sft` analyses notebook 03's matched SFT run instead (same base, steps, spacing, optimizer and lr;
  `helpers.experiments.nb03_origin.Study.run(study.sft)`, cached and shared with notebook 03), through `trajectory.dir`.

Where runs go: the reference setting (no overrides, no scale, rl) is the params file's own run directory
`outputs/<name>[-<profile>]/` (where the notebooks and `make run` write), so the default run is never trained or
analysed twice; every other setting gets `<run dir>/robustness/<factor>=<value>/`. A setting is skipped when each of
its notebooks is complete by the batch runner's rule (`helpers.pipeline.batch.is_complete`) or has results with the setting's
params hash written after the notebook was last edited (e.g. by CI's direct run of notebooks 00–02 just before); its
RL run is cached by the sections it depends on, so a changed params file re-runs notebooks, not training. The batch
directory `<run dir>/robustness/` also gets `robustness.json` (settings, resolved overrides, run directories, status,
seconds) and `index.html` / `index.md` (grid table with links to every run's executed notebooks, their headline
numbers, the Fig-2 figure), which open from disk.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from helpers.pipeline import batch as batch_mod
from helpers.experiments import claims as C
from helpers.lib import cli
from helpers.lib import config as config_mod
from helpers.experiments import paper
from helpers.experiments import plots
from helpers.pipeline import report
from helpers.lib.paths import atomic_write_json, outputs_root

NOTEBOOK = "07_robustness"
SGD_LR = "origin.sgd_lr"            # the overrides value that stands for notebook 03's SGD lr
TRAJECTORIES = ("rl", "sft")
SETTING_KEYS = {"factor", "value", "overrides", "scale", "trajectory"}
METRICS = {                          # results key -> the notebook that writes it
    "weight_r2_median": "01_weight_linearity", "weight_r2_q1": "01_weight_linearity",
    "weight_r2_q3": "01_weight_linearity", "weight_r2_frac_above_0_7": "01_weight_linearity",
    "token_r2_median": "02_output_linearity", "token_r2_q1": "02_output_linearity",
    "token_r2_q3": "02_output_linearity",
    "base_accuracy": "00_trajectory", "final_accuracy": "00_trajectory", "train_seconds": "00_trajectory"}
SPACES = ("weight", "token")         # the R² spaces: weight entries (notebook 01), token log-probs (notebook 02)
INTERVALS = {                        # results key ([lo, hi] of the median) -> the notebook that writes it
    "weight_r2_median_ci": "01_weight_linearity", "token_r2_median_ci": "02_output_linearity"}
HEADLINE = {"00_trajectory": ["base_accuracy", "final_accuracy"],     # batch index: numbers shown per notebook
            "01_weight_linearity": ["weight_r2_median", "weight_r2_frac_above_0_7"],
            "02_output_linearity": ["token_r2_median"]}


# ------------------------------------------------------------------------------------------------------- the design

@dataclass(frozen=True)
class Setting:
    """One point of the design (see the module docstring)."""
    factor: str
    value: str
    overrides: dict = field(default_factory=dict, hash=False)
    scale: dict = field(default_factory=dict, hash=False)
    trajectory: str = "rl"

    @property
    def label(self) -> str:
        return f"{self.factor}={self.value}"

    @property
    def is_reference(self) -> bool:
        return not self.overrides and not self.scale and self.trajectory == "rl"

    @property
    def dirname(self) -> str:
        return re.sub(r"[^A-Za-z0-9.+=-]+", "-", self.label).strip("-")


def _knob(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def design(cfg) -> list[Setting]:
    """The settings of `cfg.robustness.settings`, checked: known keys, knobs that exist, numeric scales, one run
    directory per setting. Errors name the params file and the setting."""
    raw = cfg.robustness.settings
    if not raw:
        raise ValueError(f"{cfg.source}: robustness.settings is empty")
    out: list[Setting] = []
    for i, entry in enumerate(raw):
        where = f"{cfg.source}: robustness.settings[{i}]"
        if not isinstance(entry, Mapping) or "factor" not in entry or "value" not in entry:
            raise ValueError(f"{where}: expected a mapping with at least `factor` and `value`, got {entry!r}")
        if set(entry) - SETTING_KEYS:
            raise ValueError(f"{where}: unknown keys {sorted(set(entry) - SETTING_KEYS)} (known: {sorted(SETTING_KEYS)})")
        s = Setting(str(entry["factor"]), str(entry["value"]), dict(entry.get("overrides") or {}),
                    dict(entry.get("scale") or {}), str(entry.get("trajectory", "rl")))
        where = f"{where} ({s.label})"
        if s.trajectory not in TRAJECTORIES:
            raise ValueError(f"{where}: trajectory must be one of {TRAJECTORIES}, got {s.trajectory!r}")
        for knob in [*s.overrides, *s.scale]:
            try:
                _knob(cfg, knob)
            except KeyError:
                raise ValueError(f"{where}: no parameter {knob!r} in {cfg.source}") from None
        for knob, f in s.scale.items():
            if not isinstance(f, (int, float)) or not isinstance(_knob(cfg, knob), (int, float)):
                raise ValueError(f"{where}: scale {knob}: {f!r} needs a number and a numeric knob")
        out.append(s)
    names = [s.dirname for s in out]
    if len(set(names)) != len(names):
        raise ValueError(f"{cfg.source}: robustness.settings: two settings share a run directory name ({names})")
    if sum(s.is_reference for s in out) > 1:
        raise ValueError(f"{cfg.source}: robustness.settings: more than one setting without changes (reference)")
    return out


def design_table(cfg) -> pd.DataFrame:
    """The design as written: factor, value, what each setting changes, and its trajectory."""
    def changes(s: Setting) -> str:
        parts = [f"{k} = {v}" for k, v in s.overrides.items()] + [f"{k} × {v:g}" for k, v in s.scale.items()]
        return ", ".join(parts) or "—"
    return pd.DataFrame([{"factor": s.factor, "value": s.value, "changes": changes(s), "trajectory": s.trajectory,
                          "run directory": "(the run's own)" if s.is_reference else f"robustness/{s.dirname}"}
                         for s in design(cfg)])


def run_overrides(setting: Setting, ref, params_file: str, base: Mapping[str, Any] | None = None) -> dict:
    """The dotted overrides of one setting's run: `base` (the caller's), scaled knobs, the setting's overrides, SGD's
    lr resolved, and for SFT `trajectory.dir` = the SFT run (trained on a cache miss). `ref` = the reference config."""
    from helpers.experiments import nb03_origin as origin

    over = dict(base or {})
    if not setting.is_reference:
        over["rl.seeds"] = 1                    # one run per setting, as in LIN v3 Fig. 2 (the reference has its seeds)
    over |= {k: origin.significant(_knob(ref, k) * f) for k, f in setting.scale.items()}
    over |= setting.overrides
    if over.get("rl.lr") == SGD_LR:
        over["rl.lr"] = origin.Study(ref, None).sgd_lr()
    if setting.trajectory == "sft":
        cfg = config_mod.load(params_file, ref.profile, over)
        study = origin.Study(cfg, None)
        over["trajectory.dir"] = batch_mod._portable(study.run(study.sft))
    return over


# --------------------------------------------------------------------------------------------------------- the runs

@dataclass
class Entry:
    """One setting's run: its directory, the overrides it ran with, and what happened."""
    setting: Setting
    dir: Path
    overrides: dict
    params_hash: str | None = None
    knobs: dict = field(default_factory=dict)  # the run's rl.optimizer and rl.lr
    status: str = "not run"          # ran (some notebook executed) | complete (all reused) | failed
    error: str | None = None
    seconds: float = 0.0             # wall time spent on it by this call


@dataclass
class Batch:
    run_dir: Path                    # the reference run directory
    dir: Path                        # <run_dir>/robustness
    notebooks: list[str]
    entries: list[Entry]
    seconds: float = 0.0

    @property
    def failed(self) -> list[Entry]:
        return [e for e in self.entries if e.status == "failed"]

    def check(self) -> None:
        """Raise naming every failed setting and its error."""
        if self.failed:
            raise RuntimeError(f"{len(self.failed)} of {len(self.entries)} robustness settings failed (the others "
                               f"are done; a re-run resumes, executed notebooks kept under {self.dir}):\n" +
                               "\n".join(f"- {e.setting.label}: {e.error}" for e in self.failed))


def _done(selected: Sequence[Path], run_dir: Path, params_hash: str) -> bool:
    """Every selected notebook is complete by the batch runner's rule, or has results with this params hash written
    after the notebook was last edited (by a direct run, e.g. CI's, which leaves no executed copy)."""
    def done(nb: Path) -> bool:
        path = run_dir / "results" / f"{nb.stem}.json"
        res = report._read_json(path) or {}
        return batch_mod.is_complete(nb, run_dir, params_hash) or (
            res.get("_meta", {}).get("params_hash") == params_hash and path.stat().st_mtime >= nb.stat().st_mtime)
    return all(done(nb) for nb in selected)


@contextlib.contextmanager
def _kernel_threads(n: int | None) -> Iterator[None]:
    """`OMP_NUM_THREADS=n` for the notebook kernels started inside the block, unless the environment sets it."""
    if n is None or "OMP_NUM_THREADS" in os.environ:
        yield
        return
    os.environ["OMP_NUM_THREADS"] = str(int(n))
    try:
        yield
    finally:
        os.environ.pop("OMP_NUM_THREADS", None)


def pretrain(settings: Sequence[Setting], ref, params_file: str, overrides: Mapping[str, Any] | None = None,
             workers: int = 2) -> None:
    """Train the RL runs of the settings that are not cached yet, `workers` at a time in single-threaded processes
    (`training.in_processes`; new base models first), so the notebooks then only analyse. A setting whose overrides
    cannot be built is left to `run_settings`, which reports it."""
    from helpers.lib import training

    cfgs = []
    for s in settings:
        if s.trajectory != "rl":
            continue
        try:
            cfgs.append(config_mod.load(params_file, ref.profile, run_overrides(s, ref, params_file, overrides)))
        except Exception:  # noqa: BLE001 - reported by run_settings with the setting's name
            continue
    missing = [c for c in cfgs if training.cached_trajectory(c) is None]
    bases = {c.hash("task", "model", "sft", "seed"): c for c in missing if training.cached_base(c) is None}
    training.in_processes(_tolerant, [(training.base_model, c) for c in bases.values()], workers)
    training.in_processes(_tolerant, [(training.embedded_trajectory, c) for c in missing], workers)


def _tolerant(build, cfg) -> None:
    """`build(cfg)` for `pretrain`; a failure is left for the setting's notebook 00 to report in place."""
    try:
        build(cfg)
    except Exception:  # noqa: BLE001
        pass


def run_dir_of(cfg, out: str | Path | None = None) -> Path:
    """The reference run directory: `<out or outputs/>/<params name>[-<profile>]`."""
    return (Path(out) if out else outputs_root()) / cfg.run_name


def run_settings(params_file: str = config_mod.DEFAULT_PARAMS, profile: str = "auto",
                 overrides: Mapping[str, Any] | None = None, run_dir: str | Path | None = None, force: bool = False,
                 notebooks_dir: str | Path = batch_mod.NOTEBOOKS_DIR) -> Batch:
    """Run the notebooks of every setting that is not complete (in order, so the reference run exists before SGD's lr
    is matched to it), continue past failures, write `robustness.json`; returns the batch."""
    t0 = time.time()
    ref = config_mod.load(params_file, profile, overrides)
    if ref.trajectory.dir:
        raise ValueError(f"{ref.source}: the robustness grid trains its own runs; trajectory.dir must be null "
                         f"(it is {ref.trajectory.dir!r})")
    settings = design(ref)
    run_dir = Path(run_dir) if run_dir else run_dir_of(ref)
    nbs = batch_mod.discover(notebooks_dir)
    selected = [batch_mod.select(nbs, str(n)) for n in ref.robustness.notebooks]
    params_arg = batch_mod._portable(params_file)
    out = Batch(run_dir, run_dir / "robustness", [nb.stem for nb in selected], [])
    pretrain(settings, ref, params_file, overrides)
    for i, s in enumerate(settings, 1):
        entry = Entry(s, run_dir if s.is_reference else out.dir / s.dirname, {})
        out.entries.append(entry)
        print(f"[{i}/{len(settings)}] {s.label} -> {entry.dir}", flush=True)
        start = time.time()
        try:
            entry.overrides = run_overrides(s, ref, params_file, overrides)
            cfg = config_mod.load(params_file, ref.profile, entry.overrides)
            entry.params_hash = cfg.hash()
            entry.knobs = {"optimizer": cfg.rl.optimizer, "lr": float(cfg.rl.lr)}
            if not force and _done(selected, entry.dir, entry.params_hash):
                entry.status = "complete"
                report.build_run_index(entry.dir)
                print("  complete, reused", flush=True)
            else:
                notebook_set = nbs if s.is_reference else selected  # a setting's index lists only what it runs
                with _kernel_threads(ref.robustness.kernel_threads):
                    outcome = batch_mod.run_combination(notebook_set, selected, params_arg, cfg, entry.overrides,
                                                        entry.dir, force)
                ran = any(v == "ran" for v in outcome.status.values())
                entry.status, entry.error = ("ran" if ran else "complete", None) if outcome.ok else ("failed",
                                                                                                  outcome.error)
        except Exception as e:  # a setting that cannot be built (bad knob value, training error) fails alone
            entry.status, entry.error = "failed", f"{type(e).__name__}: {e}"
            print(f"  FAILED: {entry.error}", file=sys.stderr, flush=True)
        entry.seconds = round(time.time() - start, 1)
    out.seconds = round(time.time() - t0, 1)
    atomic_write_json(out.dir / "robustness.json", {
        "params_file": params_arg, "profile": ref.profile, "overrides": dict(overrides or {}),
        "notebooks": out.notebooks, "seconds": out.seconds,
        "settings": [{"factor": e.setting.factor, "value": e.setting.value, "trajectory": e.setting.trajectory,
                      "overrides": e.overrides, "run": Path(os.path.relpath(e.dir, out.dir)).as_posix(),
                      "params_hash": e.params_hash, "status": e.status, "error": e.error, "seconds": e.seconds}
                     for e in out.entries]})
    return out


# ----------------------------------------------------------------------------------------------- reading the results

def collect(b: Batch, cfg) -> pd.DataFrame:
    """One row per setting: factor, value, trajectory, the numbers of `METRICS` and the (lo, hi) intervals of
    `INTERVALS` read from its results files (NaN when missing or from other params), `linear` (both R² medians above
    `cfg`'s bar, `claims.r2_threshold`), seconds (its notebooks' last execution times, training included when notebook
    00 built the RL run), run directory and status."""
    rows = []
    for e in b.entries:
        row: dict[str, Any] = {"factor": e.setting.factor, "value": e.setting.value,
                               "trajectory": e.setting.trajectory, "reference": e.setting.is_reference,
                               "optimizer": e.knobs.get("optimizer"), "lr": e.knobs.get("lr", math.nan)}
        results = {}
        for nb in b.notebooks:
            res = report._read_json(e.dir / "results" / f"{nb}.json") or {}
            if e.params_hash and res.get("_meta", {}).get("params_hash") == e.params_hash:
                results[nb] = res
        for key, nb in METRICS.items():
            val = results.get(nb, {}).get(key)
            row[key] = float(val) if isinstance(val, (int, float)) else math.nan
        for key, nb in INTERVALS.items():
            row[key] = _interval(results.get(nb, {}).get(key))
        seconds = [n.seconds for n in report.summarize(e.dir).notebooks if n.name in results]
        row["seconds"] = sum(s or 0.0 for s in seconds) if results else math.nan
        row |= {"run": str(e.dir), "status": e.status, "measured": len(results) == len(b.notebooks)}
        rows.append(row)
    t = pd.DataFrame(rows)
    thr = C.r2_threshold(cfg)
    t["linear"] = (t["weight_r2_median"] > thr) & (t["token_r2_median"] > thr)
    t.index = [f"{f}={v}" for f, v in zip(t["factor"], t["value"])]
    return t


def _interval(value) -> tuple[float, float]:
    """A stored [lo, hi] as floats; (NaN, NaN) when missing or not two numbers."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(x, (int, float)) for x in value):
        return float(value[0]), float(value[1])
    return math.nan, math.nan


def _f(x, fmt: str = ".2f") -> str:
    return format(x, fmt) if x is not None and math.isfinite(x) else "n/a"


def fig2_table(t: pd.DataFrame) -> pd.DataFrame:
    """The numbers of the figure: median and IQR of weight and token R², share of weights above the papers' bar,
    held-out accuracy base → final, whether both medians clear the bar and the seconds each setting took."""
    iqr = lambda a, b: [f"{_f(x)} – {_f(y)}" for x, y in zip(t[a], t[b])]  # noqa: E731
    return pd.DataFrame({
        "factor": t["factor"], "value": t["value"],
        "weight R² median": t["weight_r2_median"].round(3), "weight R² IQR": iqr("weight_r2_q1", "weight_r2_q3"),
        f"weights R² > {paper.R2_BAR:g}": [_f(x, ".0%") for x in t["weight_r2_frac_above_0_7"]],
        "token R² median": t["token_r2_median"].round(3), "token R² IQR": iqr("token_r2_q1", "token_r2_q3"),
        "held-out acc": [f"{_f(a)} → {_f(b)}" for a, b in zip(t["base_accuracy"], t["final_accuracy"])],
        "linear": np.where(t["measured"], np.where(t["linear"], "yes", "no"), "not measured"),
        "seconds": t["seconds"].round(0)}, index=t.index)


def plot(t: pd.DataFrame, cfg):
    """LIN v3 Fig. 2 style: median (marker) and IQR (bar) of weight and token R² per setting, settings grouped by
    factor, `cfg`'s R² bar, the paper's lowest RL median, and the reference's medians as dotted lines."""
    import matplotlib.pyplot as plt

    factors = list(dict.fromkeys(t["factor"]))
    x, pos, ticks = 0.0, [], []
    for f in factors:
        n = int((t["factor"] == f).sum())
        pos += [x + i for i in range(n)]
        ticks.append((x + (n - 1) / 2, f))
        x += n + 0.8
    pos = np.array(pos)
    fig, ax = plt.subplots(figsize=(max(6.4, 0.75 * len(t) + 2.5), 4.4))
    ref = t[t["reference"]]
    for i, (space, label) in enumerate((("weight", "weights"), ("token", "token log-probs"))):
        med, q1, q3 = (t[f"{space}_r2_{k}"].to_numpy(float) for k in ("median", "q1", "q3"))
        ax.errorbar(pos + (i - 0.5) * 0.22, med, yerr=[med - q1, q3 - med], fmt="os"[i], capsize=3, color=f"C{i}",
                    label=f"{label} (median, IQR)")
        if len(ref) and math.isfinite(ref[f"{space}_r2_median"].iloc[0]):
            ax.axhline(ref[f"{space}_r2_median"].iloc[0], color=f"C{i}", ls=":", lw=1)
    thr, rl = C.r2_threshold(cfg), paper.get("robust_rl")
    ax.axhline(thr, color="k", ls="--", lw=1, label=f"R² = {thr:g} (the bar)")
    ax.axhline(rl.value, color="0.5", ls="-.", lw=1, label=f"paper: lowest RL median ({rl.source})")
    ax.grid(axis="x", visible=False)
    ax.set_xticks(pos, list(t["value"]), rotation=30, ha="right", fontsize=8)
    for centre, f in ticks:
        ax.annotate(f, (centre, 1.0), xycoords=("data", "axes fraction"), xytext=(0, 4), textcoords="offset points",
                    ha="center", fontsize=9, fontweight="bold")
    for edge in np.cumsum([int((t["factor"] == f).sum()) + 0.8 for f in factors])[:-1]:
        ax.axvline(edge - 0.9, color="0.8", lw=0.8)
    ax.set(xlim=(pos.min() - 0.6, pos.max() + 0.6), ylim=(0, 1.02), ylabel="R² vs step")
    ax.set_title("Linearity across settings (LIN v3 Fig. 2)", pad=18)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


# -------------------------------------------------------------------------------------------------------- claims

def claims(t: pd.DataFrame, cfg) -> list[C.Claim]:
    """Notebook 07's claims (`helpers.experiments.claims`) from `collect`'s table: every RL setting linear, and SFT less linear
    than the reference RL run in weight and token space."""
    st = C.Settings.of(cfg)
    rl, sft = t[t["trajectory"] == "rl"], t[t["trajectory"] == "sft"]
    return [rl_settings_linear(rl, st), *sft_less_linear(rl[rl["reference"]], sft, st)]


def _ci(x: float, interval: tuple[float, float]) -> str:
    return f"{_f(x, '.3f')} [{_f(interval[0], '.3f')}, {_f(interval[1], '.3f')}]"


def rl_settings_linear(rl: pd.DataFrame, st: C.Settings) -> C.Claim:
    """The least linear RL setting's R² median (weight or token, whichever is lower) above the bar; interval [min of
    lows, min of highs] over settings and spaces — NaN, so inconclusive, when a setting has no median or interval."""
    names = [f"{label} ({space})" for label in rl.index for space in SPACES]
    a = np.array([(r[f"{space}_r2_median"], *r[f"{space}_r2_median_ci"]) for _, r in rl.iterrows() for space in SPACES],
                 dtype=np.float64).reshape(-1, 3)
    missing = [n for n, row in zip(names, a) if not np.isfinite(row).all()]
    known = np.isfinite(a[:, 0])
    low = float(a[known, 0].min()) if known.any() else math.nan
    interval = (float(a[:, 1].min()), float(a[:, 2].min())) if len(a) and not missing else (math.nan, math.nan)
    detail = f"least linear: {names[int(np.nanargmin(a[:, 0]))]}" if known.any() else "no RL setting measured"
    if missing:
        detail += f"; no median or interval for {', '.join(missing)}"
    return C.Claim("nb07.rl_settings_linear", f"every RL setting linear (least linear setting's weight / token R² "
                   f"median above {st.r2_threshold:g})", paper.get("robust_rl"), low, interval,
                   C.above(st.r2_threshold),
                   f"exact bootstrap intervals of each setting's medians at {100 * st.level:.4g} % (notebooks 01 / "
                   f"02); the least linear's [min of the lows, min of the highs] over {len(rl)} RL settings × 2 spaces",
                   detail)


def sft_less_linear(ref: pd.DataFrame, sft: pd.DataFrame, st: C.Settings) -> list[C.Claim]:
    """Reference RL − SFT R² median in weight and in token space (the first row of each; NaN when one is empty)."""
    def median(df: pd.DataFrame, space: str) -> tuple[str, float, tuple[float, float]]:
        if df.empty:
            return "none", math.nan, (math.nan, math.nan)
        return str(df.index[0]), float(df[f"{space}_r2_median"].iloc[0]), tuple(df[f"{space}_r2_median_ci"].iloc[0])

    out = []
    for space in SPACES:
        (ra, a, ai), (sb, b, bi) = median(ref, space), median(sft, space)
        d, interval = C.difference(a, ai, b, bi)
        out.append(C.Claim(f"nb07.sft_less_linear_{space}", f"SFT less linear than RL ({space} R² median, reference "
                           "RL − SFT)", paper.get("robust_sft"), d, interval, C.above(0, tolerance=st.r2_margin),
                           f"difference of two runs' exact bootstrap intervals of the median at "
                           f"{100 * st.level:.4g} %, half-widths in quadrature",
                           f"{ra} {_ci(a, ai)}, {sb} {_ci(b, bi)}"))
    return out


def results(b: Batch, t: pd.DataFrame) -> dict:
    """The keys notebook 07 saves: `settings` (one dict per setting) and summary numbers."""
    m = t[t["measured"]]
    rl, sft = m[m["trajectory"] == "rl"], m[m["trajectory"] == "sft"]
    keep = ["factor", "value", "trajectory", *METRICS, *INTERVALS, "linear", "seconds", "status"]
    settings = [{**{k: r[k] for k in keep}, "overrides": e.overrides,
                 "run": os.path.relpath(e.dir, b.run_dir)} for e, (_, r) in zip(b.entries, t.iterrows())]
    ref = rl[rl["reference"]]
    first = lambda df, col: float(df[col].iloc[0]) if len(df) else None  # noqa: E731
    return {"settings": settings, "n_settings": len(t), "n_measured": len(m),
            "n_linear": int(m["linear"].sum()),
            "linear_settings": list(m.index[m["linear"]]), "nonlinear_settings": list(m.index[~m["linear"]]),
            "rl_weight_r2_median_min": float(rl["weight_r2_median"].min()) if len(rl) else None,
            "rl_weight_r2_median_max": float(rl["weight_r2_median"].max()) if len(rl) else None,
            "rl_token_r2_median_min": float(rl["token_r2_median"].min()) if len(rl) else None,
            "rl_token_r2_median_max": float(rl["token_r2_median"].max()) if len(rl) else None,
            "reference_weight_r2_median": first(ref, "weight_r2_median"),
            "reference_token_r2_median": first(ref, "token_r2_median"),
            "sft_weight_r2_median": first(sft, "weight_r2_median"),
            "sft_token_r2_median": first(sft, "token_r2_median"),
            "settings_seconds": float(t["seconds"].sum()), "batch_seconds": b.seconds}


def write_index(b: Batch, figures: Sequence[str | Path] = ()) -> Path:
    """The batch index `<run dir>/robustness/index.html` (+ `.md`): factor and value, each run's overrides and status,
    links to its executed notebooks with their headline numbers, and `figures`. Each run's own index is rebuilt
    first, so every link resolves."""
    for e in b.entries:
        report.build_run_index(e.dir)
    return report.build_batch_index([e.dir for e in b.entries], out=b.dir / "index.html", figures=figures,
                                    title=f"Robustness grid · {b.run_dir.name}",
                                    headline={n: HEADLINE.get(n, []) for n in b.notebooks},
                                    labels=[{"factor": e.setting.factor, "value": e.setting.value}
                                            for e in b.entries])


# ------------------------------------------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.pipeline.robustness", description=__doc__.splitlines()[0])
    ap.add_argument("params", help="params file, e.g. params/default.yaml")
    ap.add_argument("--profile", default="auto", help='params profile ("auto" = $RLVR_PROFILE, else default)')
    ap.add_argument("--force", action="store_true", help="re-run notebooks even when their outputs are complete")
    ap.add_argument("--out", type=Path, help="where the reference run directory goes (default outputs/)")
    args = ap.parse_args(argv)
    cfg = config_mod.load(args.params, args.profile)
    b = run_settings(args.params, args.profile, run_dir=run_dir_of(cfg, args.out), force=args.force)
    plots.style()
    t = collect(b, cfg)
    figure = plots.save(plot(t, cfg), b.run_dir, NOTEBOOK, "robustness")
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(fig2_table(t).to_string())
    print("\n".join(c.sentence() for c in claims(t, cfg)))
    print(f"batch index: {write_index(b, [figure])}  ({b.seconds:.0f} s)")
    for e in b.failed:
        print(f"FAILED {e.setting.label}: {e.error}", file=sys.stderr)
    return 1 if b.failed else 0


def cli_main() -> None:
    """The `rlvr-robustness` command."""
    cli.run(main)


if __name__ == "__main__":
    cli_main()
