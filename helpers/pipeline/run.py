"""The context a notebook runs in: its params, its run directory, and where figures and results go.

Every notebook starts with

    run = helpers.pipeline.run.start("01_weight_linearity", params_file, profile, run_dir, overrides)

and ends with `run.compare(claims)` (the paper-vs-measured table and verdicts, `helpers.experiments.claims`) and
`run.save_results({...})`, which stores the claims beside the measured numbers. The run directory defaults to
`outputs/<params name>[-<profile>]/`; its layout is `helpers.pipeline.rundir`.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from helpers.experiments import claims as claims_mod
from helpers.experiments import plots
from helpers.lib import config as config_mod
from helpers.lib.paths import outputs_root
from helpers.pipeline import results
from helpers.pipeline.rundir import RunDir


def write_figure(fig, path: str | os.PathLike) -> Path:
    """Save `fig` as a PNG at `path` (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    tmp = path.with_suffix(".png.tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
    return path


@dataclass
class Run:
    """One notebook's session: its name, config and run directory, and the claims it compared."""

    notebook: str
    cfg: config_mod.Config
    dir: Path
    helpers_version: str = field(default_factory=results.helpers_version)  # the sources this kernel imported
    started: float = field(default_factory=time.time)
    claims: list = field(default_factory=list)

    @property
    def paths(self) -> RunDir:
        """Where each thing of this run's directory lives."""
        return RunDir(self.dir)

    def savefig(self, fig, name: str) -> Path:
        """`figures/<notebook>/<name>.png` of the run directory."""
        return write_figure(fig, self.paths.figure(self.notebook, name))

    def save_results(self, measured: Mapping[str, Any]) -> Path:
        """`results/<notebook>.json`: the measured numbers, the claims of `compare` (`claims`: id, paper, measured,
        ci_low, ci_high, verdict, rule, ...) and their verdict sentences (`verdicts`)."""
        meta = {
            "notebook": self.notebook,
            "params": self.cfg.source,
            "profile": self.cfg.profile,
            "params_hash": self.cfg.hash(),
            "helpers_version": self.helpers_version,
            "seconds": round(time.time() - self.started, 1),
        }
        payload = {
            **measured,
            "claims": [c.record() for c in self.claims],
            "verdicts": [c.sentence() for c in self.claims],
        }
        return results.save(self.dir, self.notebook, payload, meta)

    def results_of(self, notebook: str) -> dict:
        """What another notebook of this run measured (its results file must exist)."""
        return results.load(self.dir, notebook)

    def compare(self, claims: Iterable[claims_mod.Claim]):
        """Print every claim's verdict sentence, keep the claims for `save_results`, return the paper-vs-measured
        table."""
        self.claims = list(claims)
        ids = [c.id for c in self.claims]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{self.notebook}: claim ids used twice: {sorted({i for i in ids if ids.count(i) > 1})}")
        print("\n".join(c.sentence() for c in self.claims))
        return claims_mod.table(self.claims)


def start(
    notebook: str,
    params_file: str = config_mod.DEFAULT_PARAMS,
    profile: str = "auto",
    run_dir: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Run:
    """Load the params, pick the run directory, set the plot style."""
    cfg = config_mod.load(params_file, profile=profile, overrides=overrides)
    out = Path(run_dir) if run_dir else outputs_root() / cfg.run_name
    out.mkdir(parents=True, exist_ok=True)
    plots.style()
    pd.set_option("display.max_colwidth", None)  # paper-vs-measured cells are sentences; show them whole
    print(f"{notebook}: params {cfg.source} (profile {cfg.profile}, hash {cfg.hash()}) -> {out}")
    return Run(notebook, cfg, out)
