"""Robustness grid runner: the overrides each setting runs with, the orchestration (batch runner faked), the grid
handed to notebook 07 and the batch index, read back from hand-written run directories (no kernel)."""

import json
import math
import os
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from helpers.experiments import nb07_robustness as nb07
from helpers.lib import config
from helpers.pipeline import batch, results
from helpers.pipeline import robustness as R
from tests.test_nb07_robustness import NOTEBOOKS, SPECS, measured, params_with


def test_overrides_scale_this_files_value_and_resolve_sgd_lr(tmp_path):
    ref = config.load("params/default.yaml", "default", {"origin.sgd_lr": 0.123456, "rl.lr": 2e-4})
    scaled = R.run_overrides(nb07.Setting("lr", "3x", scale={"rl.lr": 3}), ref, {"seed": 5})
    assert scaled == {"seed": 5, "rl.seeds": 1, "rl.lr": 6e-4}  # one run per setting
    third = R.run_overrides(nb07.Setting("lr", "0.33x", scale={"rl.lr": 0.333333}), ref)
    assert third == {"rl.seeds": 1, "rl.lr": pytest.approx(6.667e-5, rel=1e-12)}
    sgd = nb07.Setting("optimizer", "SGD", {"rl.optimizer": "sgd", "rl.lr": nb07.SGD_LR})
    assert R.run_overrides(sgd, ref) == {"rl.seeds": 1, "rl.optimizer": "sgd", "rl.lr": 0.123456}  # as notebook 03


# ------------------------------------------------------------------------------- hand-written run directories


def write_run(run_dir: Path, params_hash: str, weight=None, token=None, executed=True, acc=(0.2, 0.4), ci=0.02):
    """Results of notebooks 00-02 (`measured`) as written by these helpers sources, + executed copies and a run.json;
    the medians' intervals are median ± `ci` (none when `ci` is None)."""
    numbers = measured(weight, token, acc, ci)
    (run_dir / "results").mkdir(parents=True, exist_ok=True)
    for nb, res in numbers.items():
        meta = {"params_hash": params_hash, "helpers_version": results.helpers_version(), "seconds": 10.0}
        (run_dir / "results" / f"{nb}.json").write_text(json.dumps({**res, "_meta": meta}))
        if executed:
            (run_dir / f"{nb}.ipynb").write_text(
                json.dumps({"cells": [], "metadata": {"papermill": {"duration": 20.0, "exception": False}}})
            )
            (run_dir / f"{nb}.html").write_text("<html></html>")
    (run_dir / "run.json").write_text(
        json.dumps({"overrides": {}, "params_hash": params_hash, "notebooks": list(NOTEBOOKS)})
    )


@pytest.fixture
def fake_batch(tmp_path):
    """A reference, a non-linear lr setting, SGD, SFT, and a setting whose results are from other params."""
    run_dir = tmp_path / "outputs" / "default"
    entries = []
    for i, (s, knobs, w, t) in enumerate(SPECS):
        d = run_dir if s.is_reference else run_dir / "robustness" / s.dirname
        write_run(d, f"h{i}" if w else "other", w, t)
        entries.append(R.Entry(s, d, dict(s.overrides), f"h{i}", knobs, "complete"))
    return R.Batch(run_dir, run_dir / "robustness", list(NOTEBOOKS), entries, 1.0)


CFG = config.load("params/default.yaml", "default")


def test_table_reads_the_results_and_marks_the_linear_regime(fake_batch):
    t = nb07.collect(fake_batch.grid(), CFG)
    assert list(t.index) == ["reference=default", "lr=3x", "optimizer=SGD", "training=SFT", "model=2 layers"]
    ref = t.loc["reference=default"]
    assert (ref.weight_r2_median, ref.weight_r2_q1, ref.token_r2_q3, ref.final_accuracy) == (0.85, 0.6, 0.97, 0.4)
    assert ref.seconds == 60.0 and ref.measured and ref.linear
    assert ref.weight_r2_median_ci == pytest.approx((0.83, 0.87))
    assert ref.token_r2_median_ci == pytest.approx((0.88, 0.92))
    assert list(t["linear"]) == [True, False, True, False, False]
    stale = t.loc["model=2 layers"]
    assert not stale.measured and math.isnan(stale.weight_r2_median) and math.isnan(stale.seconds)
    assert all(math.isnan(x) for x in stale.weight_r2_median_ci)
    shown = nb07.fig2_table(t)
    assert (
        shown.loc["lr=3x", "weight R² IQR"] == "0.30 – 0.80" and shown.loc["model=2 layers", "linear"] == "not measured"
    )


def test_grid_hands_over_each_settings_results_with_its_params(fake_batch):
    grid = fake_batch.grid()
    assert (grid.run_dir, grid.notebooks, grid.seconds) == (fake_batch.run_dir, list(NOTEBOOKS), 1.0)
    ref, stale = grid.runs[0], grid.runs[-1]
    assert ref.setting.label == "reference=default" and ref.dir == fake_batch.run_dir and ref.status == "complete"
    assert list(ref.results) == list(NOTEBOOKS) and ref.results["01_weight_linearity"]["weight_r2_median"] == 0.85
    assert ref.seconds == {nb: 20.0 for nb in NOTEBOOKS}  # the executed notebooks' durations
    assert ref.knobs == {"optimizer": "adamw", "lr": 3e-4} and grid.runs[2].overrides == {"rl.optimizer": "sgd"}
    assert stale.results == {} and stale.seconds == {}  # written with other params


def test_batch_index_from_two_run_directories_opens_from_disk(tmp_path):
    run_dir = tmp_path / "outputs" / "default-smoke"
    write_run(run_dir, "h0", (0.5, 0.8, 0.9), (0.8, 0.9, 0.95))
    sft_dir = run_dir / "robustness" / "training=SFT"
    write_run(sft_dir, "h1", (0.2, 0.4, 0.6), (0.1, 0.3, 0.5), executed=False)
    (run_dir / "figures" / R.NOTEBOOK).mkdir(parents=True)
    figure = run_dir / "figures" / R.NOTEBOOK / "robustness.png"
    figure.write_bytes(b"png")
    b = R.Batch(
        run_dir,
        run_dir / "robustness",
        list(NOTEBOOKS),
        [
            R.Entry(nb07.Setting("reference", "default"), run_dir, {}, "h0"),
            R.Entry(nb07.Setting("training", "SFT", trajectory="sft"), sft_dir, {"trajectory.dir": "x"}, "h1"),
        ],
    )
    page = R.write_index(b, [figure])
    html = page.read_text()
    links = re.findall(r"(?:href|src)='([^']+)'", html)
    assert links and all(not re.match(r"^(/|[a-z]+:)", link) for link in links)  # relative only
    for link in links:
        assert (page.parent / unquote(link)).exists(), link
    assert "../00_trajectory.html" in links and "../figures/07_robustness/robustness.png" in links
    assert not any("training%3DSFT/0" in link for link in links)  # no executed copies there: no notebook link
    assert "<td>reference</td><td>default</td>" in html and "<td>training</td><td>SFT</td>" in html
    assert "<dt>weight_r2_median</dt><dd>0.8</dd>" in html and "<dt>token_r2_median</dt><dd>0.3</dd>" in html
    assert "<dt>train_seconds</dt>" not in html and html.count("complete 3/3") == 2
    md = page.with_suffix(".md").read_text()
    assert "| reference | default | [default-smoke](../index.html) |" in md


# ------------------------------------------------------------------------------ orchestration (batch runner faked)


def test_runs_reuse_skip_and_fail_per_setting(tmp_path, monkeypatch):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    for nb in (*NOTEBOOKS, "03_other"):
        (nbs / f"{nb}.ipynb").write_text("{}")
    p = params_with(
        tmp_path,
        [
            {"factor": "reference", "value": "default"},
            {"factor": "rollouts", "value": 4, "overrides": {"rl.rollouts": 4}},
            {"factor": "algorithm", "value": "bad", "overrides": {"rl.algorithm": "gspo"}},
        ],
    )
    calls = []

    pretrained = []
    monkeypatch.setattr(R, "pretrain", lambda settings, *a, **k: pretrained.append([s.label for s in settings]))

    def fake_run(notebooks, selected, params_file, cfg, overrides, run_dir, force=False):
        calls.append((run_dir.name, [nb.stem for nb in selected], overrides))
        assert len(notebooks) == (4 if run_dir.name == "grid" else 3)  # the reference run keeps the whole set
        assert os.environ["OMP_NUM_THREADS"] == "1"  # robustness.kernel_threads, for the kernels only
        if cfg.rl.algorithm == "gspo":  # this setting's notebook 00 fails
            return batch.RunOutcome(
                run_dir.name,
                run_dir,
                overrides,
                {nb.stem: "failed" for nb in selected},
                "notebook 00_trajectory failed in cell 3: ValueError: rl.algorithm",
            )
        write_run(run_dir, cfg.hash(), (0.5, 0.8, 0.9), (0.6, 0.9, 0.95))
        return batch.RunOutcome(run_dir.name, run_dir, overrides, {nb.stem: "ran" for nb in selected})

    monkeypatch.setattr(R.batch_mod, "run_combination", fake_run)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    run_dir = tmp_path / "out" / "grid"
    write_run(run_dir, config.load(p, "default").hash(), (0.5, 0.8, 0.9), (0.6, 0.9, 0.95), executed=False)
    b = R.run_settings(str(p), "default", run_dir=run_dir, notebooks_dir=nbs)
    assert [(e.setting.label, e.status) for e in b.entries] == [
        ("reference=default", "complete"),
        ("rollouts=4", "ran"),
        ("algorithm=bad", "failed"),
    ]
    assert calls == [
        ("rollouts=4", list(NOTEBOOKS), {"rl.seeds": 1, "rl.rollouts": 4}),
        ("algorithm=bad", list(NOTEBOOKS), {"rl.seeds": 1, "rl.algorithm": "gspo"}),
    ]
    assert pretrained[0] == ["reference=default", "rollouts=4", "algorithm=bad"]  # trained ahead, two at a time
    assert b.entries[1].dir == run_dir / "robustness" / "rollouts=4" and "OMP_NUM_THREADS" not in os.environ
    manifest = json.loads((run_dir / "robustness" / "robustness.json").read_text())
    assert [s["run"] for s in manifest["settings"]] == ["..", "rollouts=4", "algorithm=bad"]
    assert manifest["settings"][2]["error"].startswith("notebook 00_trajectory failed")
    with pytest.raises(RuntimeError, match=r"(?s)1 of 3 robustness settings failed.*algorithm=bad: notebook 00"):
        b.check()
    calls.clear()
    again = R.run_settings(str(p), "default", run_dir=run_dir, notebooks_dir=nbs)
    assert [e.status for e in again.entries[:2]] == ["complete", "complete"] and [c[0] for c in calls] == [
        "algorithm=bad"
    ]
    monkeypatch.setattr(results, "helpers_version", lambda *a: "fixed")  # a changed helper runs everything again
    calls.clear()
    R.run_settings(str(p), "default", run_dir=run_dir, notebooks_dir=nbs)
    assert [c[0] for c in calls] == ["grid", "rollouts=4", "algorithm=bad"]
    calls.clear()
    R.run_settings(str(p), "default", run_dir=run_dir, notebooks_dir=nbs)
    assert [c[0] for c in calls] == ["algorithm=bad"]
    edited = nbs / "01_weight_linearity.ipynb"  # an edited notebook runs again (its results are older)
    os.utime(edited, (edited.stat().st_mtime + 100,) * 2)
    calls.clear()
    R.run_settings(str(p), "default", run_dir=run_dir, notebooks_dir=nbs)
    assert [c[0] for c in calls] == ["grid", "rollouts=4", "algorithm=bad"]


def test_a_users_run_directory_is_refused(tmp_path):
    p = params_with(tmp_path, [{"factor": "reference", "value": "default"}], extra="trajectory:\n  dir: /some/run\n")
    with pytest.raises(ValueError, match="trajectory.dir must be null"):
        R.run_settings(str(p), "default", run_dir=tmp_path / "out")
