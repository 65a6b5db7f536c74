"""The robustness grid runner: notebook 07's design (`helpers.experiments.nb07_robustness`), one-factor-at-a-time
runs around one params file, each analysed by notebooks 00–02 through the batch runner; notebook 07 only reads their
results.

    python -m helpers.pipeline.robustness params/default.yaml [--profile smoke] [--force] [--out DIR]

Where runs go: the reference setting (no overrides, no scale, rl) is the params file's own run directory
`outputs/<name>[-<profile>]/` (where the notebooks and `make run` write), so the default run is never trained or
analysed twice; every other setting gets `<run dir>/robustness/<factor>=<value>/`. A setting is skipped when each of
its notebooks is complete by the batch runner's rule (`helpers.pipeline.batch.is_complete`) or has results with the
setting's params hash, made by the same helpers sources and written after the notebook was last edited (e.g. by CI's
direct run of notebooks 00–02 just before); its RL run is cached by the sections it depends on, so a changed params
file re-runs notebooks, not training. The batch directory `<run dir>/robustness/` also gets `robustness.json`
(settings, resolved overrides, run directories, status, seconds) and `index.html` / `index.md` (grid table with links
to every run's executed notebooks, their headline numbers, the Fig-2 figure), which open from disk.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from helpers.experiments import nb03_origin as origin
from helpers.experiments import nb07_robustness as nb
from helpers.experiments import plots
from helpers.lib import cli, training
from helpers.lib import config as config_mod
from helpers.lib.paths import atomic_write_json, outputs_root
from helpers.pipeline import batch as batch_mod
from helpers.pipeline import report, results
from helpers.pipeline import run as run_mod
from helpers.pipeline.rundir import RunDir

NOTEBOOK = "07_robustness"
HEADLINE = {
    "00_trajectory": ["base_accuracy", "final_accuracy"],  # batch index: numbers shown per notebook
    "01_weight_linearity": ["weight_r2_median", "weight_r2_frac_above_0_7"],
    "02_output_linearity": ["token_r2_median"],
}


def run_overrides(setting: nb.Setting, ref, base: Mapping[str, Any] | None = None) -> dict:
    """The dotted overrides of one setting's run: `base` (the caller's), scaled knobs, the setting's overrides, SGD's
    lr resolved, and for SFT `trajectory.dir` = the SFT run (trained on a cache miss). `ref` = the reference config."""
    over = dict(base or {})
    if not setting.is_reference:
        over["rl.seeds"] = 1  # one run per setting, as in LIN v3 Fig. 2 (the reference has its seeds)
    over |= {k: origin.significant(nb.knob(ref, k) * f) for k, f in setting.scale.items()}
    over |= setting.overrides
    if over.get("rl.lr") == nb.SGD_LR:
        over["rl.lr"] = origin.Study(ref, None).sgd_lr()
    if setting.trajectory == "sft":
        study = origin.Study(config_mod.derive(ref, over), None)
        over["trajectory.dir"] = batch_mod.portable(study.run(study.sft))
    return over


# --------------------------------------------------------------------------------------------------------- the runs


@dataclass
class Entry:
    """One setting's run: its directory, the overrides it ran with, and what happened."""

    setting: nb.Setting
    dir: Path
    overrides: dict
    params_hash: str | None = None
    knobs: dict = field(default_factory=dict)  # the run's rl.optimizer and rl.lr
    status: str = "not run"  # ran (some notebook executed) | complete (all reused) | failed
    error: str | None = None
    seconds: float = 0.0  # wall time spent on it by this call


@dataclass
class Batch:
    run_dir: Path  # the reference run directory
    dir: Path  # <run_dir>/robustness
    notebooks: list[str]
    entries: list[Entry]
    seconds: float = 0.0

    @property
    def failed(self) -> list[Entry]:
        return [e for e in self.entries if e.status == "failed"]

    def check(self) -> None:
        """Raise naming every failed setting and its error."""
        if self.failed:
            raise RuntimeError(
                f"{len(self.failed)} of {len(self.entries)} robustness settings failed (the others "
                f"are done; a re-run resumes, executed notebooks kept under {self.dir}):\n"
                + "\n".join(f"- {e.setting.label}: {e.error}" for e in self.failed)
            )

    def grid(self) -> nb.Grid:
        """What notebook 07 reads: each setting's run with the results its notebooks wrote with the setting's params
        hash, and their last execution times."""
        runs = []
        for e in self.entries:
            found = {}
            for name in self.notebooks:
                res = results.read(e.dir, name) or {}
                if e.params_hash and res.get("_meta", {}).get("params_hash") == e.params_hash:
                    found[name] = res
            seconds = {n.name: n.seconds for n in report.summarize(e.dir).notebooks if n.name in found}
            runs.append(nb.SettingRun(e.setting, e.dir, e.overrides, e.status, e.knobs, found, seconds))
        return nb.Grid(self.run_dir, self.notebooks, runs, self.seconds)


def _done(selected: Sequence[Path], run_dir: Path, params_hash: str) -> bool:
    """Every selected notebook is complete by the batch runner's rule, or has results with this params hash made by
    these helpers sources and written after the notebook was last edited (by a direct run, e.g. CI's, which leaves
    no executed copy)."""
    run, version = RunDir(run_dir), results.helpers_version()

    def done(notebook: Path) -> bool:
        meta = (results.read(run_dir, notebook.stem) or {}).get("_meta", {})
        return batch_mod.is_complete(notebook, run_dir, params_hash) or (
            meta.get("params_hash") == params_hash
            and meta.get("helpers_version") == version
            and run.results(notebook.stem).stat().st_mtime >= notebook.stat().st_mtime
        )

    return all(done(notebook) for notebook in selected)


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


def pretrain(settings: Sequence[nb.Setting], ref, overrides: Mapping[str, Any] | None = None, workers: int = 2) -> None:
    """Train the RL runs of the settings that are not cached yet, `workers` at a time in single-threaded processes
    (`training.in_processes`; new base models first), so the notebooks then only analyse. A setting whose overrides
    cannot be built is left to `run_settings`, which reports it."""
    cfgs = []
    for s in settings:
        if s.trajectory != "rl":
            continue
        try:
            cfgs.append(config_mod.derive(ref, run_overrides(s, ref, overrides)))
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


def run_settings(
    params_file: str = config_mod.DEFAULT_PARAMS,
    profile: str = "auto",
    overrides: Mapping[str, Any] | None = None,
    run_dir: str | Path | None = None,
    force: bool = False,
    notebooks_dir: str | Path = batch_mod.NOTEBOOKS_DIR,
) -> Batch:
    """Run the notebooks of every setting that is not complete (in order, so the reference run exists before SGD's lr
    is matched to it), continue past failures, write `robustness.json`; returns the batch."""
    t0 = time.time()
    ref = config_mod.load(params_file, profile, overrides)
    if ref.trajectory.dir:
        raise ValueError(
            f"{ref.source}: the robustness grid trains its own runs; trajectory.dir must be null "
            f"(it is {ref.trajectory.dir!r})"
        )
    settings = nb.design(ref)
    run_dir = Path(run_dir) if run_dir else run_dir_of(ref)
    nbs = batch_mod.discover(notebooks_dir)
    selected = [batch_mod.select(nbs, str(n)) for n in ref.robustness.notebooks]
    params_arg = batch_mod.portable(params_file)
    layout = RunDir(run_dir)
    out = Batch(run_dir, layout.robustness, [notebook.stem for notebook in selected], [])
    pretrain(settings, ref, overrides)
    for i, s in enumerate(settings, 1):
        entry = Entry(s, run_dir if s.is_reference else layout.setting(s.dirname), {})
        out.entries.append(entry)
        print(f"[{i}/{len(settings)}] {s.label} -> {entry.dir}", flush=True)
        start = time.time()
        try:
            entry.overrides = run_overrides(s, ref, overrides)
            cfg = config_mod.derive(ref, entry.overrides)
            entry.params_hash = cfg.hash()
            entry.knobs = {"optimizer": cfg.rl.optimizer, "lr": float(cfg.rl.lr)}
            if not force and _done(selected, entry.dir, entry.params_hash):
                entry.status = "complete"
                report.build_run_index(entry.dir)
                print("  complete, reused", flush=True)
            else:
                notebook_set = nbs if s.is_reference else selected  # a setting's index lists only what it runs
                with _kernel_threads(ref.robustness.kernel_threads):
                    outcome = batch_mod.run_combination(
                        notebook_set, selected, params_arg, cfg, entry.overrides, entry.dir, force
                    )
                ran = any(v == "ran" for v in outcome.status.values())
                entry.status, entry.error = (
                    ("ran" if ran else "complete", None) if outcome.ok else ("failed", outcome.error)
                )
        except Exception as e:  # a setting that cannot be built (bad knob value, training error) fails alone
            entry.status, entry.error = "failed", f"{type(e).__name__}: {e}"
            print(f"  FAILED: {entry.error}", file=sys.stderr, flush=True)
        entry.seconds = round(time.time() - start, 1)
    out.seconds = round(time.time() - t0, 1)
    atomic_write_json(
        layout.robustness_manifest,
        {
            "params_file": params_arg,
            "profile": ref.profile,
            "overrides": dict(overrides or {}),
            "notebooks": out.notebooks,
            "seconds": out.seconds,
            "settings": [
                {
                    "factor": e.setting.factor,
                    "value": e.setting.value,
                    "trajectory": e.setting.trajectory,
                    "overrides": e.overrides,
                    "run": Path(os.path.relpath(e.dir, out.dir)).as_posix(),
                    "params_hash": e.params_hash,
                    "status": e.status,
                    "error": e.error,
                    "seconds": e.seconds,
                }
                for e in out.entries
            ],
        },
    )
    return out


def write_index(b: Batch, figures: Sequence[str | Path] = ()) -> Path:
    """The batch index `<run dir>/robustness/index.html` (+ `.md`): factor and value, each run's overrides and status,
    links to its executed notebooks with their headline numbers, and `figures`. Each run's own index is rebuilt
    first, so every link resolves."""
    for e in b.entries:
        report.build_run_index(e.dir)
    return report.build_batch_index(
        [e.dir for e in b.entries],
        out=RunDir(b.run_dir).robustness_index,
        figures=figures,
        title=f"Robustness grid · {b.run_dir.name}",
        headline={n: HEADLINE.get(n, []) for n in b.notebooks},
        labels=[{"factor": e.setting.factor, "value": e.setting.value} for e in b.entries],
    )


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
    t = nb.collect(b.grid(), cfg)
    figure = run_mod.write_figure(nb.plot(t, cfg), RunDir(b.run_dir).figure(NOTEBOOK, "robustness"))
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(nb.fig2_table(t).to_string())
    print("\n".join(c.sentence() for c in nb.claims(t, cfg)))
    print(f"batch index: {write_index(b, [figure])}  ({b.seconds:.0f} s)")
    for e in b.failed:
        print(f"FAILED {e.setting.label}: {e.error}", file=sys.stderr)
    return 1 if b.failed else 0


def cli_main() -> None:
    """The `rlvr-robustness` command."""
    cli.run(main)


if __name__ == "__main__":
    cli_main()
