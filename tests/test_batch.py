"""Batch runner: grid expansion and names (no kernel), then a few real papermill executions of tiny notebooks."""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import nbformat
import pytest

from helpers.lib import cli, config
from helpers.lib.paths import REPO
from helpers.pipeline import batch, results
from helpers.pipeline.rundir import RunDir

PARAMETERS = """params_file = "params/default.yaml"   # model × algorithm × scale
profile = "auto"                      # "default", "smoke" (CI), or "auto"
run_dir = None                        # where outputs go
overrides = {}                        # dotted overrides"""


def notebook(path, *cells, start=True):
    """A notebook: title, the parameters cell, `run = helpers.pipeline.run.start(...)` (if `start`), then `cells`."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# {path.stem}"),
        nbformat.v4.new_code_cell(PARAMETERS, metadata={"tags": ["parameters"]}),
        *(
            [
                nbformat.v4.new_code_cell(
                    f"import helpers.pipeline.run\n"
                    f"run = helpers.pipeline.run.start({path.stem!r}, params_file, profile, "
                    f"run_dir, overrides)"
                )
            ]
            if start
            else []
        ),
        *(nbformat.v4.new_code_cell(c) for c in cells),
    ]
    nbformat.write(nb, str(path))
    return path


@pytest.fixture(scope="module")
def params(tmp_path_factory):
    p = tmp_path_factory.mktemp("params") / "tiny.yaml"
    p.write_text("name: tiny\nseed: 3\nprofiles:\n  smoke:\n    seed: 4\n")
    return p


# ---------------------------------------------------------------- no kernel


def test_grid_values_are_typed_and_expanded():
    grid = batch.parse_grid(["rl.lr=1e-5,3.0e-5", "rl.algorithm=grpo,gspo", "x.flag=true", "x.n=8"])
    assert grid == {"rl.lr": [1e-5, 3e-5], "rl.algorithm": ["grpo", "gspo"], "x.flag": [True], "x.n": [8]}
    assert isinstance(grid["rl.lr"][0], float) and isinstance(grid["x.n"][0], int)
    combos = batch.combinations(grid)
    assert len(combos) == 4 and combos[0] == {"rl.lr": 1e-5, "rl.algorithm": "grpo", "x.flag": True, "x.n": 8}
    assert [c["rl.algorithm"] for c in combos] == ["grpo", "gspo", "grpo", "gspo"]  # first key varies slowest
    assert batch.combinations({}) == [{}]
    for bad in (["rl.lr"], ["=1"], ["rl.lr="], ["a=1", "a=2"]):
        with pytest.raises(ValueError, match="--grid"):
            batch.parse_grid(bad)


def test_run_names_are_readable_and_distinct():
    assert batch.run_name("default", {}) == "default"
    assert (
        batch.run_name("default-smoke", {"rl.lr": 1e-5, "rl.algorithm": "grpo"})
        == "default-smoke_lr=1e-5_algorithm=grpo"
    )
    assert batch.run_name("p", {"rl.lr": 3e-5, "sft.lr": 1e-4}) == "p_rl.lr=3e-5_sft.lr=0.0001"
    assert batch.run_name("p", {"a.flag": False, "a.path": "x/y z"}) == "p_flag=false_path=x-y-z"
    assert batch.batch_name("p", {"rl.lr": [1], "rl.algorithm": [2]}) == "p_grid_lr_algorithm"


def test_discover_orders_the_set_and_only_selects(tmp_path):
    for name in ("10_c.ipynb", "02_b.ipynb", "01_a.ipynb", "scratch.ipynb", "1_x.ipynb"):
        (tmp_path / name).write_text("{}")
    found = batch.discover(tmp_path)
    assert [p.name for p in found] == ["01_a.ipynb", "02_b.ipynb", "10_c.ipynb"]
    assert batch.select(found, "02").name == batch.select(found, "02_b").name == "02_b.ipynb"
    with pytest.raises(ValueError, match="no such notebook.*01_a"):
        batch.select(found, "03")
    with pytest.raises(FileNotFoundError, match="no notebooks"):
        batch.discover(tmp_path / "empty")


def test_unknown_grid_key_fails_before_running(tmp_path, params):
    notebook(tmp_path / "01_a.ipynb")
    with pytest.raises(config.ConfigError, match="overrides.*nope"):
        batch.run_batch(params, {"nope": [1]}, profile="default", out=tmp_path / "out", notebooks_dir=tmp_path)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the code version (no kernel)


def test_helpers_version_follows_the_sources_not_their_times(tmp_path):
    pkg = tmp_path / "helpers"
    shutil.copytree(results.HELPERS, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    before = results.helpers_version(pkg)
    source = pkg / "lib" / "cache.py"
    os.utime(source, (1, 1))
    (pkg / "notes.txt").write_text("not a source")
    assert results.helpers_version(pkg) == before
    text = source.read_text()
    source.write_text(text + "\n# fixed\n")
    assert results.helpers_version(pkg) != before
    source.write_text(text)
    assert results.helpers_version(pkg) == before
    (pkg / "lib" / "new.py").write_text("")
    assert results.helpers_version(pkg) != before


def test_results_of_other_code_run_again(tmp_path, params, monkeypatch):
    """A changed helper or a changed notebook (even one with an older time) re-runs a complete notebook."""
    source = notebook(tmp_path / "01_a.ipynb", 'run.save_results({"x": 1.0})')
    cfg, run_dir = config.load(params, "default"), tmp_path / "out" / "tiny"
    versions = []

    def execute(nb, out, parameters, cwd, cell_timeout):  # what a good papermill run leaves
        versions.append(results.code_version(nb))
        RunDir(out).executed(nb.stem).write_text(json.dumps({"cells": [], "metadata": {"papermill": {}}}))
        results.save(out, nb.stem, {"x": 1.0}, {"params_hash": cfg.hash()})
        return 0.0

    monkeypatch.setattr(batch, "execute", execute)
    monkeypatch.setattr(batch, "export_html", lambda run, name: None)

    def status():
        return batch.run_combination([source], [source], str(params), cfg, {}, run_dir).status["01_a"]

    assert (status(), status()) == ("ran", "skipped")
    assert RunDir(run_dir).read_manifest()["code_versions"] == {"01_a": versions[0]}
    monkeypatch.setattr(results, "helpers_version", lambda *a: "fixed")
    assert not batch.is_complete(source, run_dir, cfg.hash())
    assert (status(), status()) == ("ran", "skipped")
    old = source.stat().st_mtime - 100
    source.write_text(source.read_text().replace("1.0", "2.0"))
    os.utime(source, (old, old))
    assert (status(), status()) == ("ran", "skipped") and len(set(versions)) == 3


# ---------------------------------------------------------------- real executions (5 in total)


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory, params):
    """01_alpha + 02_beta (which reads 01's results) over seed=1,2 in the smoke profile: 4 executions."""
    nbs = tmp_path_factory.mktemp("notebooks")
    notebook(
        nbs / "01_alpha.ipynb",
        "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([0, 1], [0, run.cfg.seed])\n"
        "run.savefig(fig, 'line')",
        'run.save_results({"x": 1.0, "seed": run.cfg.seed, "third": 1 / 3, "nested": {"a": 0.123456789}, '
        '"curve": [1, 2, 3]})',
    )
    notebook(nbs / "02_beta.ipynb", 'run.save_results({"y": run.results_of("01_alpha")["x"] + run.cfg.seed})')
    out = tmp_path_factory.mktemp("outputs")
    outcomes = batch.run_batch(params, {"seed": [1, 2]}, profile="smoke", out=out, notebooks_dir=nbs)
    return nbs, out, outcomes


@pytest.mark.slow
def test_grid_runs_every_combination_into_its_own_dir(grid_run):
    nbs, out, outcomes = grid_run
    assert [o.name for o in outcomes] == ["tiny-smoke_seed=1", "tiny-smoke_seed=2"]
    assert all(o.ok and o.status == {"01_alpha": "ran", "02_beta": "ran"} for o in outcomes)
    hashes = []
    for o, seed in zip(outcomes, (1, 2)):
        run = out / o.name
        manifest = json.loads((run / "run.json").read_text())
        assert manifest["overrides"] == {"seed": seed} and manifest["profile"] == "smoke"
        hashes.append(manifest["params_hash"])
        for name in ("01_alpha", "02_beta"):
            assert (run / f"{name}.ipynb").is_file() and (run / f"{name}.html").stat().st_size > 10_000
            res = json.loads((run / "results" / f"{name}.json").read_text())
            assert res["_meta"]["params_hash"] == manifest["params_hash"]
        assert json.loads((run / "results" / "02_beta.json").read_text())["y"] == 1.0 + seed
        assert (run / "figures" / "01_alpha" / "line.png").stat().st_size > 1000
        executed = json.loads((run / "01_alpha.ipynb").read_text())
        assert executed["metadata"]["papermill"]["parameters"]["overrides"] == {"seed": seed}
    assert hashes[0] != hashes[1]


def test_run_index_links_notebooks_and_shows_headline_numbers(grid_run):
    _, out, outcomes = grid_run
    run = out / outcomes[1].name
    page = (run / "index.html").read_text()
    links = re.findall(r"(?:href|src)='([^']+)'", page)
    assert "01_alpha.html" in links and "02_beta.html" in links and "figures/01_alpha/line.png" in links
    assert not any(link.startswith(("/", "file:", "http")) for link in links)
    assert all((run / link).exists() for link in links)
    for shown in (
        "<dt>third</dt><dd>0.3333</dd>",
        "<dt>nested.a</dt><dd>0.1235</dd>",
        "<dt>y</dt><dd>3</dd>",
        "<dt>seed</dt><dd>2</dd>",
    ):
        assert shown in page
    assert "curve" not in page and "complete 2/2" in page
    md = (run / "index.md").read_text()
    assert "[01_alpha](01_alpha.html)" in md and "third = 0.3333" in md


def test_batch_index_has_a_row_per_combination(grid_run):
    _, out, outcomes = grid_run
    page = (out / "tiny-smoke_grid_seed-index.html").read_text()
    links = re.findall(r"href='([^']+)'", page)
    assert links == [f"{o.name.replace('=', '%3D')}/index.html" for o in outcomes]
    assert all(
        (out / "tiny-smoke_grid_seed-index.html").parent.joinpath(link.replace("%3D", "=")).is_file() for link in links
    )
    assert page.count("complete 2/2") == 2 and "<dt>y</dt><dd>2</dd>" in page and "<dt>y</dt><dd>3</dd>" in page


@pytest.mark.slow
def test_rerun_skips_complete_notebooks_and_force_reruns(grid_run, params, capsys):
    nbs, out, _ = grid_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.ipynb")}
    again = batch.run_batch(params, {"seed": [1, 2]}, profile="smoke", out=out, notebooks_dir=nbs)
    assert [set(o.status.values()) for o in again] == [{"skipped"}, {"skipped"}]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.ipynb")} == before
    assert "skipped" in capsys.readouterr().out
    forced = batch.run_batch(params, {"seed": [2]}, only="02", force=True, profile="smoke", out=out, notebooks_dir=nbs)
    assert forced[0].status == {"02_beta": "ran"}
    run = out / "tiny-smoke_seed=2"
    assert (run / "02_beta.ipynb").stat().st_mtime_ns > before[run / "02_beta.ipynb"]
    assert (run / "01_alpha.ipynb").stat().st_mtime_ns == before[run / "01_alpha.ipynb"]
    assert "done in" in capsys.readouterr().out
    params_hash = json.loads((run / "run.json").read_text())["params_hash"]
    source = nbs / "01_alpha.ipynb"
    assert batch.is_complete(source, run, params_hash) and not batch.is_complete(source, run, "other-hash")
    later = (run / "01_alpha.ipynb").stat().st_mtime + 10
    os.utime(source, (later, later))  # an edited notebook runs again
    assert not batch.is_complete(source, run, params_hash)
    manifest = json.loads((out / "tiny-smoke_grid_seed.json").read_text())  # the batch index keeps both rows
    assert manifest == {"grid": {"seed": [1, 2]}, "runs": ["tiny-smoke_seed=1", "tiny-smoke_seed=2"]}
    assert (out / "tiny-smoke_grid_seed-index.html").read_text().count("complete 2/2") == 2


@pytest.mark.slow
def test_failure_names_notebook_and_cell_and_leaves_no_results(tmp_path, params, capsys):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    notebook(nbs / "01_alpha.ipynb", 'run.save_results({"x": 1.0})')
    notebook(
        nbs / "02_boom.ipynb",  # kept light (no helpers import): a kernel start is the slow part here
        "from pathlib import Path\nres = Path(run_dir, 'results', '02_boom.json')\n"
        "assert not res.exists(), 'the stale results file was not removed before the run'",
        "res.write_text('{\"z\": 1.0}')  # as if results were saved before a later cell failed",
        "# the failing cell\nraise ValueError('boom')",
        start=False,
    )
    out = tmp_path / "out"
    run = out / "tiny"
    stale = run / "results" / "02_boom.json"  # complete-looking results of an earlier run, but no executed notebook
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"z": 0.0, "_meta": {"params_hash": config.load(params, "default").hash()}}))

    assert (
        batch.main(
            [str(params), "--only", "02_boom", "--profile", "default", "--out", str(out), "--notebooks", str(nbs)]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "notebook 02_boom failed in cell 4 (`# the failing cell`): ValueError: boom" in err
    assert "executed notebook kept for inspection" in err
    assert not stale.exists()
    assert (run / "02_boom.ipynb").is_file() and (run / "02_boom.html").is_file()
    assert not batch.is_complete(nbs / "02_boom.ipynb", run, config.load(params, "default").hash())
    page = (run / "index.html").read_text()
    assert "failed" in page and "ValueError: boom" in page and "not run" in page  # 01_alpha was not selected


# ---------------------------------------------------------------- user errors, timeouts, dead kernels


def test_empty_only_is_an_error_not_all_notebooks(tmp_path, params, capsys):
    notebook(tmp_path / "01_a.ipynb")
    with pytest.raises(ValueError, match=r"--only '': empty notebook name .*\(have: 01_a\)"):
        batch.run_batch(params, only="", profile="default", out=tmp_path / "out", notebooks_dir=tmp_path)
    with pytest.raises(SystemExit) as e:  # `--only "$NB"` with NB unset
        cli.run(batch.main, [str(params), "--only", "", "--out", str(tmp_path / "out"), "--notebooks", str(tmp_path)])
    assert e.value.code == 2 and not (tmp_path / "out").exists()
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize(
    "module, argv, message",
    [
        ("batch", ["missing.yaml"], "missing.yaml: params file not found"),
        ("robustness", ["missing.yaml"], "missing.yaml: params file not found"),
        ("regime", ["missing.yaml"], "missing.yaml"),
        ("notebooks", ["strip", "missing.ipynb"], "missing.ipynb: not a readable notebook"),
    ],
)
@pytest.mark.slow
def test_every_command_line_ends_a_user_error_in_one_line(tmp_path, module, argv, message):
    def run(*extra):
        return subprocess.run(
            [sys.executable, "-m", f"helpers.pipeline.{module}", *argv, *extra],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )

    done = run()
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr
    debug = run("--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr


@pytest.fixture(scope="module")
def hasty(tmp_path_factory):
    """Params whose cells may run for one second."""
    p = tmp_path_factory.mktemp("params") / "hasty.yaml"
    p.write_text("name: hasty\nbatch:\n  cell_timeout: 1\n")
    return p


@pytest.mark.parametrize(
    "cell, error",
    [
        ("import time\ntime.sleep(30)", "CellTimeoutError: the cell ran longer than batch.cell_timeout = 1 s"),
        ("import os\nos._exit(1)", "DeadKernelError: the kernel died while the cell ran"),
    ],
)
@pytest.mark.slow
def test_timeout_and_dead_kernel_name_notebook_and_cell(tmp_path, hasty, capfd, cell, error):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    notebook(nbs / "01_stuck.ipynb", "x = 1", cell, "y = 2", start=False)
    out = tmp_path / "out"
    start = time.time()
    assert batch.main([str(hasty), "--profile", "default", "--out", str(out), "--notebooks", str(nbs)]) == 1
    assert time.time() - start < 25
    err = capfd.readouterr().err  # the kernel's own stderr included: no shutdown traceback
    line = cell.splitlines()[0]
    assert "Traceback" not in err
    assert f"notebook 01_stuck failed in cell 3 (`{line}`): {error}" in err, err
    run = out / "hasty"
    assert "executed notebook kept for inspection" in err and (run / "01_stuck.ipynb").is_file()
    assert not batch.is_complete(nbs / "01_stuck.ipynb", run, config.load(hasty, "default").hash())
    page = (run / "index.html").read_text()
    assert "failed" in page and error.split(":")[0] in page and line in page
