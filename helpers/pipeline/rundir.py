"""The layout of a run directory, in one place:

<run dir>/
  run.json                  the batch runner's manifest: params file, profile, overrides, params hash, notebook
                            order, and the code version each notebook last ran with
  NN_x.ipynb, NN_x.html     the executed notebooks (batch runner)
  results/NN_x.json         what each notebook measured (`helpers.pipeline.results`)
  figures/NN_x/NAME.png     its figures (`helpers.pipeline.run.Run.savefig`)
  probes/                   the probes its output-linearity numbers were measured on (`helpers.lib.probes`)
  index.html, index.md      the pages to open (`helpers.pipeline.report`)
  robustness/               the robustness grid (`helpers.pipeline.robustness`): `<factor>=<value>/`, a run
                            directory per setting, `robustness.json` and the grid's `index.html` / `index.md`
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class RunDir(os.PathLike):
    """Where each thing of the run directory `path` lives; usable wherever the directory's path is."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def manifest(self) -> Path:
        return self.path / "run.json"

    @property
    def index(self) -> Path:
        return self.path / "index.html"

    @property
    def index_md(self) -> Path:
        return self.path / "index.md"

    @property
    def robustness(self) -> Path:
        """The robustness grid's directory."""
        return self.path / "robustness"

    @property
    def robustness_manifest(self) -> Path:
        return self.robustness / "robustness.json"

    @property
    def robustness_index(self) -> Path:
        return self.robustness / "index.html"

    def setting(self, dirname: str) -> Path:
        """The run directory of one robustness setting (not the reference's: that is this one)."""
        return self.robustness / dirname

    @property
    def probes(self) -> Path:
        return self.path / "probes"

    def results(self, notebook: str) -> Path:
        return self.path / "results" / f"{notebook}.json"

    def figures(self, notebook: str) -> Path:
        return self.path / "figures" / notebook

    def figure(self, notebook: str, name: str) -> Path:
        return self.figures(notebook) / f"{name}.png"

    def executed(self, notebook: str) -> Path:
        """The executed copy of a notebook (`NN_x.ipynb`)."""
        return self.path / f"{notebook}.ipynb"

    def page(self, notebook: str) -> Path:
        """The executed notebook as a page (`NN_x.html`)."""
        return self.path / f"{notebook}.html"

    def notebooks(self) -> set[str]:
        """The notebooks the directory holds an executed copy or results of."""
        return {p.stem for p in self.path.glob("*.ipynb")} | {p.stem for p in (self.path / "results").glob("*.json")}

    def read_manifest(self) -> dict:
        """`run.json`, or {} when it is missing or unreadable."""
        try:
            return json.loads(self.manifest.read_text())
        except (OSError, ValueError):
            return {}
