"""Notebook hygiene: every committed notebook is stripped and has a well-formed `parameters` cell."""

import nbformat
import pytest

from helpers.lib.paths import REPO
from helpers.pipeline import notebooks

COMMITTED = sorted((REPO / "notebooks").glob("*.ipynb"))
PARAMETERS = 'params_file = "p"   # c\nprofile = "auto"   # c\nrun_dir = None   # c\noverrides = {}   # c\nk: int = 3'


@pytest.mark.parametrize("path", COMMITTED, ids=[p.name for p in COMMITTED])
def test_committed_notebook_is_clean(path):
    assert notebooks.check(path) == []


def write(path, parameters=PARAMETERS, tag="parameters", executed=False, name=None):
    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"duration": 1.0}
    start = f"run = helpers.pipeline.run.start({name or path.stem!r}, params_file, profile, run_dir, overrides)"
    transient = {"execution": {"iopub.status.busy": "2025-01-01T00:00:00"}}
    code = nbformat.v4.new_code_cell(start, metadata={**transient, "tags": ["keep"]})
    nb.cells = [
        nbformat.v4.new_markdown_cell("# t"),
        nbformat.v4.new_code_cell(parameters, metadata={"tags": [tag]}),
        code,
    ]
    if executed:
        code.execution_count = 1
        code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
        nb.cells.insert(2, nbformat.v4.new_code_cell("run_dir = 'x'", metadata={"tags": ["injected-parameters"]}))
    nbformat.write(nb, str(path))
    return path


def test_strip_clears_outputs_and_transient_metadata(tmp_path):
    path = write(tmp_path / "a.ipynb", executed=True)
    assert any("outputs" in p for p in notebooks.check(path))
    assert notebooks.strip(path) is True
    nb = nbformat.read(str(path), as_version=4)
    assert len(nb.cells) == 3 and "papermill" not in nb.metadata
    code = nb.cells[2]
    assert code.outputs == [] and code.execution_count is None
    assert code.metadata == {"tags": ["keep"]}
    assert notebooks.check(path) == []
    before = path.stat().st_mtime_ns
    assert notebooks.strip(path) is False and path.stat().st_mtime_ns == before  # clean files are not rewritten


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tag": "other"}, "no code cell tagged `parameters`"),
        ({"parameters": 'params_file = "p"\nprofile = "auto"'}, "cell 1) lacks run_dir, overrides"),
        ({"parameters": "params_file = (\n"}, "not valid Python"),
        ({"name": "01_other"}, "start is given 01_other but the file is bad"),
        (
            {"parameters": PARAMETERS.replace("run_dir = None   # c", "run_dir = None   # None = default")},
            "papermill cannot parse the parameters cell's lines for run_dir",
        ),
    ],
)
def test_check_names_the_file_and_the_problem(tmp_path, kwargs, message):
    path = write(tmp_path / "bad.ipynb", **kwargs)
    problems = notebooks.check(path)
    assert len(problems) == 1 and problems[0].startswith(str(path)) and message in problems[0]


def test_cli_exit_codes(tmp_path, capsys):
    good, bad = write(tmp_path / "good.ipynb"), write(tmp_path / "bad.ipynb", executed=True)
    (tmp_path / "junk.ipynb").write_text("{not json")
    assert notebooks.main(["check", str(good)]) == 0
    assert notebooks.main(["check", str(good), str(bad), str(tmp_path / "junk.ipynb")]) == 1
    err = capsys.readouterr().err
    assert "bad.ipynb" in err and "junk.ipynb: not a readable notebook" in err and "good.ipynb" not in err
    assert notebooks.main(["strip", str(bad)]) == 0 and notebooks.main(["check", str(bad)]) == 0
