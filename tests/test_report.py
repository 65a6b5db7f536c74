"""Run and batch index pages, built from hand-made run directories (no kernel)."""

import json
import re

import nbformat

from helpers.pipeline import report


def executed_notebook(path, error=None):
    """A papermill-style executed notebook; with `error`, cell 3 of the notebook as written raised it."""
    nb = nbformat.v4.new_notebook()
    cells = [
        nbformat.v4.new_markdown_cell("# title"),
        nbformat.v4.new_code_cell("params_file = 'x'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("overrides = {}", metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_code_cell("run = start()"),
        nbformat.v4.new_code_cell("\n  x = compute()  \nmore()"),
    ]
    if error:
        cells.insert(
            0,
            nbformat.v4.new_markdown_cell(
                "An Exception was encountered", metadata={"tags": ["papermill-error-cell-tag"]}
            ),
        )
        cells[-1].outputs = [nbformat.v4.new_output("error", ename="ValueError", evalue=error, traceback=[])]
    nb.cells = cells
    nb.metadata["papermill"] = {"duration": 12.34, "exception": bool(error)}
    nbformat.write(nb, str(path))


def make_run(run_dir, seed=1):
    """01 complete (10 scalars, a figure), 02 failed, 03 stale results, 04 never ran."""
    (run_dir / "results").mkdir(parents=True)
    (run_dir / "figures" / "01_a").mkdir(parents=True)
    (run_dir / "figures" / "01_a" / "hist.png").write_bytes(b"png")
    (run_dir / "run.json").write_text(
        json.dumps(
            {
                "params_file": "params/default.yaml",
                "profile": "smoke",
                "overrides": {"rl.lr": 1e-5, "seed": seed},
                "params_hash": "h1",
                "notebooks": ["01_a", "02_b", "03_c", "04_d"],
            }
        )
    )
    results = {
        "median_r2": 0.912345,
        "frac": 0.8,
        "n": 1234,
        "ok": True,
        "nan": None,
        "curve": [1, 2],
        "by": {"q": 0.5, "k": 0.25},
        "e": 5,
        "f": 6,
        "g": 7,
        "h": 8,
        "_meta": {"params_hash": "h1"},
    }
    (run_dir / "results" / "01_a.json").write_text(json.dumps(results))
    (run_dir / "results" / "03_c.json").write_text(json.dumps({"z": 2.0, "_meta": {"params_hash": "old"}}))
    executed_notebook(run_dir / "01_a.ipynb")
    (run_dir / "01_a.html").write_text("<html></html>")
    executed_notebook(run_dir / "02_b.ipynb", error="bad | input")
    return run_dir


def test_headlines_are_the_first_scalars_rounded():
    shown, more = report.headlines(
        {"a": 0.123456, "b": {"c": 12345678.9}, "d": [1], "e": None, "f": False, "g": 3, "_meta": {"x": 1}}, limit=4
    )
    assert shown == [("a", "0.1235"), ("b.c", "1.235e+07"), ("e", "n/a"), ("f", "false")] and more == 1


def test_failure_is_located_in_the_notebook_as_written(tmp_path):
    executed_notebook(tmp_path / "x.ipynb", error="boom")
    failure = report.failure_of(json.loads((tmp_path / "x.ipynb").read_text()))
    assert failure == {"cell": 3, "line": "x = compute()", "error": "ValueError: boom"}
    executed_notebook(tmp_path / "y.ipynb")
    assert report.failure_of(json.loads((tmp_path / "y.ipynb").read_text())) is None


def test_run_index_statuses_numbers_and_relative_links(tmp_path):
    run = make_run(tmp_path / "out" / "default-smoke_lr=1e-5")
    summary = report.summarize(run)
    assert [(e.name, e.status) for e in summary.notebooks] == [
        ("01_a", "complete"),
        ("02_b", "failed"),
        ("03_c", "stale"),
        ("04_d", "not run"),
    ]
    assert summary.status == "failed: 02_b"
    assert summary.notebooks[0].seconds == 12.34 and summary.notebooks[0].more == 3
    assert summary.notebooks[1].error == "cell 3 (`x = compute()`): ValueError: bad | input"

    page = report.build_run_index(run).read_text()
    links = re.findall(r"(?:href|src)='([^']+)'", page)
    assert links == ["01_a.html", "01_a.ipynb", "02_b.ipynb", "figures/01_a/hist.png", "figures/01_a/hist.png"]
    assert "<dt>median_r2</dt><dd>0.9123</dd>" in page and "<dt>by.k</dt><dd>0.25</dd>" in page
    assert "<dt>e</dt>" in page and "<dt>f</dt>" not in page and "3 more" in page and "curve" not in page
    assert "rl.lr=1e-05, seed=1" in page and "12.3 s" in page
    md = (run / "index.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| 02_b"))
    assert row.count(" | ") == 3 and "bad \\| input" in row  # a `|` in an error does not break the table


def test_batch_index_from_a_directory_a_list_and_with_figures(tmp_path):
    out = tmp_path / "out"
    runs = [make_run(out / f"r_seed={s}", seed=s) for s in (1, 2)]
    (out / "cache").mkdir()  # not a run: no run.json
    page = report.build_batch_index(out).read_text()
    assert re.findall(r"href='([^']+)'", page) == ["r_seed%3D1/index.html", "r_seed%3D2/index.html"]
    assert page.count("failed: 02_b") == 2 and "<th>rl.lr</th><th>seed</th>" in page

    fig = tmp_path / "robustness.png"
    fig.write_bytes(b"png")
    path = report.build_batch_index(runs, out=out / "b-index.html", figures=[fig])
    page = path.read_text()
    assert "src='../robustness.png'" in page and (out / "b-index.md").is_file()
    (out / "b.json").write_text(json.dumps({"runs": ["r_seed=2"]}))
    assert report.build_batch_index(out / "b.json") == out / "b-index.html"
    assert (out / "b-index.html").read_text().count("r_seed%3D") == 1


def stored_claims(run_dir, notebook, verdicts):
    """Claims records as `run.save_results` stores them, one per verdict."""
    from helpers.experiments import claims as C
    from helpers.experiments import paper

    rules = {"holds": (0.8, 0.9), "does not hold": (0.5, 0.6), "inconclusive": (0.6, 0.8)}
    recs = [
        C.Claim(
            f"{notebook}.c{i}",
            f"claim {i} of {notebook}",
            paper.get("weight_r2_share"),
            sum(rules[v]) / 2,
            rules[v],
            C.above(0.7),
            "test",
        ).record()
        for i, v in enumerate(verdicts)
    ]
    path = run_dir / "results" / f"{notebook}.json"
    data = json.loads(path.read_text()) if path.is_file() else {"_meta": {"params_hash": "h1"}}
    path.write_text(json.dumps(data | {"claims": recs}))
    return recs


def test_run_index_opens_with_a_scoreboard_of_exactly_the_stored_claims(tmp_path):
    run = make_run(tmp_path / "r")
    recs = stored_claims(run, "01_a", ["holds", "does not hold"]) + stored_claims(run, "04_d", ["inconclusive"])
    summary = report.summarize(run)
    assert [c["id"] for _, c in summary.claims] == [r["id"] for r in recs]
    page = report.build_run_index(run).read_text()
    assert page.index("Claims: paper vs measured") < page.index("<h2>Notebooks</h2>")
    assert re.findall(r"claim \d of \w+", page) == ["claim 0 of 01_a", "claim 1 of 01_a", "claim 0 of 04_d"]
    assert "1 hold, 1 do not hold, 1 inconclusive" in page and "0.850 [0.800, 0.900]" in page
    md = (run / "index.md").read_text()
    assert re.findall(r"\| (\w+) \| claim \d", md) == ["01_a", "01_a", "04_d"]


def test_batch_index_shows_the_claims_per_run(tmp_path):
    out = tmp_path / "out"
    a, b = make_run(out / "a"), make_run(out / "b")
    stored_claims(a, "01_a", ["holds", "inconclusive"])
    stored_claims(b, "01_a", ["does not hold"])
    page = report.build_batch_index(
        [a, b], out=out / "i.html", labels=[{"factor": "lr", "value": "1x"}, {"factor": "lr", "value": "3x"}]
    ).read_text()
    assert "<th>lr=1x</th><th>lr=3x</th>" in page
    row = page[page.index("01_a.c1") :].split("</tr>")[0]
    assert "inconclusive" in row and row.count("<td></td>") == 1  # run b has no claim c1
    assert (
        "| claim 0 of 01_a | holds: 0.850 [0.800, 0.900] | does not hold: 0.550 [0.500, 0.600] |"
        in (out / "i.md").read_text()
    )
