"""Execute the notebook set with papermill for every combination of a parameter grid, resuming what is done.

    python -m helpers.pipeline.batch PARAMS.yaml [--grid KEY=V1,V2 ...] [--only NOTEBOOK] [--force] [--profile P]
                                     [--out DIR] [--debug]

Each combination gets `<out>/<run-name>/` (run-name = params name [-profile] [_key=value ...]) holding the executed
notebooks (`NN_x.ipynb` + `NN_x.html`), `figures/`, `results/` (written by the notebooks), `run.json` and the
`index.html` / `index.md` to open (`helpers.pipeline.rundir`). A grid also gets `<out>/<batch-name>-index.html` with
one row per combination. A notebook is skipped when its results for the same params hash, made by the same code (the
helpers sources and the notebook file, `helpers.pipeline.results.code_version`), and an executed copy newer than the
notebook exist (unless --force). A cell running longer than `batch.cell_timeout` seconds fails its notebook.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import papermill as pm
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbconvert import HTMLExporter
from papermill.exceptions import PapermillExecutionError

from helpers.lib import cli
from helpers.lib import config as config_mod
from helpers.lib.paths import REPO, atomic_write_json, atomic_write_text, outputs_root, resolve
from helpers.pipeline import report, results
from helpers.pipeline.rundir import RunDir

NOTEBOOKS_DIR = REPO / "notebooks"
NOTEBOOK_PATTERN = "[0-9][0-9]_*.ipynb"


class NotebookFailed(RuntimeError):
    """A notebook raised, timed out or lost its kernel; the message names the notebook, the cell and the error."""


@dataclass
class RunOutcome:
    """What happened to one combination: per notebook "ran", "skipped", "failed" or "not run"."""

    name: str
    dir: Path
    overrides: dict
    status: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


# ---------------------------------------------------------------- notebooks, grid, names


def discover(notebooks_dir: str | Path = NOTEBOOKS_DIR) -> list[Path]:
    """The notebook set: `NN_*.ipynb` in `notebooks_dir`, in order."""
    found = sorted(Path(notebooks_dir).glob(NOTEBOOK_PATTERN))
    if not found:
        raise FileNotFoundError(f"{notebooks_dir}: no notebooks named {NOTEBOOK_PATTERN}")
    return found


def select(notebooks: Sequence[Path], only: str) -> Path:
    """The notebook `only` names: its file name, its stem (`01_weight_linearity`) or its number (`01`)."""
    have = ", ".join(nb.stem for nb in notebooks)
    if not only.strip():
        raise ValueError(
            f"--only {only!r}: empty notebook name (an unset variable?); give a name, stem or number "
            f"(have: {have}), or leave --only out to run them all"
        )
    for nb in notebooks:
        if only in (nb.name, nb.stem, nb.stem.split("_")[0]):
            return nb
    raise ValueError(f"--only {only}: no such notebook (have: {have})")


def parse_value(text: str) -> Any:
    """A command-line value as YAML (`3` -> 3, `true` -> True, `grpo` -> "grpo", `1e-5` -> 1e-05)."""
    return config_mod.parse_yaml(text)


def parse_grid(specs: Sequence[str]) -> dict[str, list]:
    """["rl.lr=1e-5,3e-5", "rl.algorithm=grpo"] -> {"rl.lr": [1e-05, 3e-05], "rl.algorithm": ["grpo"]}."""
    grid: dict[str, list] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise ValueError(f"--grid {spec!r}: expected KEY=VALUE[,VALUE...], e.g. rl.lr=1e-5,3e-5")
        if key in grid:
            raise ValueError(f"--grid: {key} given twice")
        grid[key] = [parse_value(v) for v in values.split(",")]
    return grid


def combinations(grid: dict[str, list]) -> list[dict]:
    """The cartesian product of the grid as override dicts, first key varying slowest; [{}] for no grid."""
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key by its last part, unless two keys share it."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: s if last.count(s) == 1 else k for k, s in zip(keys, last)}


def _label(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        text = json.dumps(value)
    elif isinstance(value, float):
        text = re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{value:g}")
    else:
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "-"


def run_name(base: str, overrides: dict) -> str:
    """`default-smoke` + `_lr=1e-5_algorithm=grpo` for the overrides of one grid combination."""
    short = _short_keys(list(overrides))
    return base + "".join(f"_{short[k]}={_label(v)}" for k, v in overrides.items())


def batch_name(base: str, grid: dict[str, list]) -> str:
    return f"{base}_grid_" + "_".join(_short_keys(list(grid)).values())


# ---------------------------------------------------------------- one notebook


def is_complete(notebook: Path, run_dir: str | os.PathLike, params_hash: str) -> bool:
    """Results written for the same params hash by the same code (`run.json`'s code version of the notebook is
    `results.code_version(notebook)`), and an executed copy that did not fail and is newer than the notebook (an
    edited notebook or a changed helper runs again)."""
    run = RunDir(run_dir)
    executed = run.executed(notebook.stem)
    try:
        meta = json.loads(run.results(notebook.stem).read_text()).get("_meta", {})
        nb = json.loads(executed.read_text())
        edited = notebook.stat().st_mtime > executed.stat().st_mtime
    except (OSError, ValueError):
        return False
    failed = nb.get("metadata", {}).get("papermill", {}).get("exception")
    made_by = run.read_manifest().get("code_versions", {}).get(notebook.stem)
    return (
        meta.get("params_hash") == params_hash
        and not failed
        and not edited
        and made_by == results.code_version(notebook)
    )


@contextlib.contextmanager
def _kernel_env() -> Iterator[None]:
    """Kernels inherit this process's environment; drop MPLBACKEND so executed notebooks keep inline figures."""
    saved = os.environ.pop("MPLBACKEND", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["MPLBACKEND"] = saved


def execute(notebook: Path, run_dir: str | os.PathLike, parameters: dict, cwd: Path, cell_timeout: float) -> float:
    """Run `notebook` with papermill into `run_dir/<name>.ipynb` (kernel python3 of this venv), each cell for at
    most `cell_timeout` seconds; returns seconds."""
    out = RunDir(run_dir).executed(notebook.stem)
    start = time.time()
    try:
        with _kernel_env():
            pm.execute_notebook(
                str(notebook),
                str(out),
                parameters=parameters,
                kernel_name="python3",
                language="python",
                cwd=str(cwd),
                progress_bar={"desc": f"  {notebook.stem}"},
                execution_timeout=cell_timeout,
                extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
            )  # no kernel log noise
    except PapermillExecutionError as e:
        raise _failed(
            notebook, out, {"cell": e.cell_index, "line": _first_line(e.source), "error": f"{e.ename}: {e.evalue}"}
        ) from e
    except (CellTimeoutError, DeadKernelError) as e:
        evalue = (
            f"the cell ran longer than batch.cell_timeout = {cell_timeout:g} s (raise it in the params file "
            f"if the cell needs longer)"
            if isinstance(e, CellTimeoutError)
            else "the kernel died while the cell ran (out of memory, a crash, or an exit in the cell)"
        )
        if out.is_file():
            _mark_running_cell(out, type(e).__name__, evalue)
        raise _failed(notebook, out, None, f"{type(e).__name__}: {evalue}") from e
    except Exception as e:  # bad notebook, missing kernel, ...
        raise NotebookFailed(f"notebook {notebook.stem} failed: {type(e).__name__}: {e}") from e
    return time.time() - start


def _first_line(source: str | None) -> str:
    return next((s.strip() for s in (source or "").splitlines() if s.strip()), "")


def _mark_running_cell(executed: Path, ename: str, evalue: str) -> None:
    """Record a timeout or dead kernel in the executed notebook as an error of the cell that was running (the last
    one papermill started), as if it raised: `report.failure_of`, the run index and `is_complete` then see it."""
    nb = json.loads(executed.read_text())
    started = [c for c in nb.get("cells", []) if c.get("metadata", {}).get("papermill", {}).get("start_time")]
    if not started or started[-1].get("cell_type") != "code":
        return
    cell = started[-1]
    cell["outputs"] = [o for o in cell.get("outputs", []) if o.get("output_type") != "error"] + [
        {"output_type": "error", "ename": ename, "evalue": evalue, "traceback": []}
    ]  # the interrupt's error replaced
    cell["metadata"]["papermill"].update(exception=True, status="failed")
    nb["metadata"].setdefault("papermill", {})["exception"] = True
    atomic_write_text(executed, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def _failed(notebook: Path, executed: Path, where: dict | None, error: str = "") -> NotebookFailed:
    """The failure of `notebook`, at the cell the executed copy records (`report.failure_of`), else at `where`."""
    where = (report.failure_of(json.loads(executed.read_text())) if executed.is_file() else None) or where
    if where is None:
        return NotebookFailed(f"notebook {notebook.stem} failed: {error}")
    return NotebookFailed(
        f"notebook {notebook.stem} failed in cell {where['cell']} (`{where['line']}`): "
        f"{where['error']}\n  executed notebook kept for inspection: {executed}"
    )


_exporter = None


def export_html(run: RunDir, notebook: str) -> Path:
    """The executed notebook `NN_x.ipynb` as its page `NN_x.html` (self-contained, opens from disk); skipped when
    already up to date."""
    global _exporter
    executed, page = run.executed(notebook), run.page(notebook)
    if page.is_file() and page.stat().st_mtime >= executed.stat().st_mtime:
        return page
    if _exporter is None:
        _exporter = HTMLExporter()
    body, _ = _exporter.from_filename(str(executed))
    return atomic_write_text(page, body)


# ---------------------------------------------------------------- one combination, the batch


def portable(params_file: str | os.PathLike) -> str:
    """The params path as the notebook should see it: repo-relative inside the repo, else absolute."""
    path = resolve(params_file).resolve()
    try:
        return path.relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def run_combination(
    notebooks: Sequence[Path],
    selected: Sequence[Path],
    params_file: str,
    cfg: config_mod.Config,
    overrides: dict,
    run_dir: Path,
    force: bool = False,
) -> RunOutcome:
    """Execute the `selected` notebooks of the set into `run_dir`, skipping complete ones; stop at the first failure."""
    outcome = RunOutcome(run_dir.name, run_dir, overrides)
    params_hash = cfg.hash()
    run = RunDir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    made_by = run.read_manifest().get("code_versions", {})  # notebook -> the code version of its last good run
    manifest = {
        "params_file": params_file,
        "profile": cfg.profile,
        "overrides": overrides,
        "params_hash": params_hash,
        "notebooks": [nb.stem for nb in notebooks],
        "code_versions": made_by,
    }
    atomic_write_json(run.manifest, manifest)
    parameters = {
        "params_file": params_file,
        "profile": cfg.profile,
        "run_dir": str(run_dir.resolve()),
        "overrides": overrides,
    }
    start = time.perf_counter()
    for nb in selected:
        name = nb.stem
        if outcome.error:
            outcome.status[name] = "not run"
            continue
        if not force and is_complete(nb, run_dir, params_hash):
            export_html(run, name)
            outcome.status[name] = "skipped"
            print(f"  {name}: complete for params hash {params_hash}, skipped", flush=True)
            continue
        run.results(name).unlink(missing_ok=True)  # a stale file must never look like this run's
        version = results.code_version(nb)  # the sources the kernel is about to import
        try:
            seconds = execute(nb, run_dir, parameters, nb.parent, cfg.batch.cell_timeout)
        except NotebookFailed as e:
            run.results(name).unlink(missing_ok=True)
            outcome.status[name], outcome.error = "failed", str(e)
            print(f"  {name}: FAILED\n{e}", file=sys.stderr, flush=True)
        else:
            outcome.status[name] = "ran"
            made_by[name] = version
            atomic_write_json(run.manifest, manifest)
            print(f"  {name}: done in {seconds:.1f} s", flush=True)
        if run.executed(name).is_file():
            export_html(run, name)
    report.build_run_index(run_dir)
    counts = ", ".join(f"{n} {status}" for status, n in collections.Counter(outcome.status.values()).items())
    print(f"  {run_dir.name}: notebooks {counts}; {time.perf_counter() - start:.1f} s in all", flush=True)
    return outcome


def run_batch(
    params_file: str | os.PathLike,
    grid: dict[str, list] | None = None,
    only: str | None = None,
    force: bool = False,
    profile: str = "auto",
    out: str | os.PathLike | None = None,
    notebooks_dir: str | os.PathLike = NOTEBOOKS_DIR,
) -> list[RunOutcome]:
    """Run the notebook set for every grid combination; returns one outcome per combination.

    Every combination's config is loaded (and so validated) before anything runs.
    """
    grid = grid or {}
    notebooks = discover(notebooks_dir)
    selected = notebooks if only is None else [select(notebooks, only)]
    out = Path(out) if out else outputs_root()
    params_arg = portable(params_file)
    combos = [(c, config_mod.load(params_file, profile, c)) for c in combinations(grid)]
    names = [run_name(cfg.run_name, c) for c, cfg in combos]
    if len(set(names)) != len(names):
        raise ValueError(f"--grid: values give clashing run names {names}")
    outcomes = []
    for i, ((combo, cfg), name) in enumerate(zip(combos, names), 1):
        print(f"[{i}/{len(combos)}] {name}  (params hash {cfg.hash()}) -> {out / name}", flush=True)
        outcomes.append(run_combination(notebooks, selected, params_arg, cfg, combo, out / name, force))
        print(f"  index: {RunDir(out / name).index}", flush=True)
    if grid:
        manifest = record_batch(out / f"{batch_name(combos[0][1].run_name, grid)}.json", grid, names)
        print(f"batch index: {report.build_batch_index(manifest)}", flush=True)
    return outcomes


def record_batch(manifest: Path, grid: dict[str, list], runs: list[str]) -> Path:
    """Add this grid's runs to the batch manifest: batches over the same keys share one index that keeps growing."""
    old = json.loads(manifest.read_text()) if manifest.is_file() else {"grid": {}, "runs": []}
    merged = {k: list(old["grid"].get(k, [])) for k in grid}
    for k, values in grid.items():
        merged[k] += [v for v in values if v not in merged[k]]
    return atomic_write_json(manifest, {"grid": merged, "runs": list(dict.fromkeys(old["runs"] + runs))})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.pipeline.batch", description=__doc__.splitlines()[0])
    ap.add_argument("params", help="params file, e.g. params/default.yaml")
    ap.add_argument(
        "--grid",
        nargs="+",
        default=[],
        metavar="KEY=V1,V2",
        help="dotted overrides; every combination of the values is one run",
    )
    ap.add_argument("--only", metavar="NOTEBOOK", help="run just this notebook (name, stem or number)")
    ap.add_argument("--force", action="store_true", help="re-run notebooks even when their outputs are complete")
    ap.add_argument("--profile", default="auto", help='params profile ("auto" = $RLVR_PROFILE, else default)')
    ap.add_argument("--out", type=Path, help="where run directories go (default outputs/)")
    ap.add_argument("--notebooks", type=Path, default=NOTEBOOKS_DIR, help="notebook directory (default notebooks/)")
    args = ap.parse_args(argv)
    outcomes = run_batch(
        args.params, parse_grid(args.grid), args.only, args.force, args.profile, args.out, args.notebooks
    )
    failed = [o for o in outcomes if not o.ok]
    for o in failed:
        print(f"FAILED run {o.name}:\n{o.error}", file=sys.stderr)
    return 1 if failed else 0


def cli_main() -> None:
    """The `rlvr-batch` command."""
    cli.run(main)


if __name__ == "__main__":
    cli_main()
