"""Notebook hygiene: strip outputs before committing, and check a notebook is stripped and has a proper parameters cell.

    python -m helpers.pipeline.notebooks strip notebooks/*.ipynb   # clear outputs, execution counts, transient metadata
    python -m helpers.pipeline.notebooks check notebooks/*.ipynb   # exit 1 naming each file that is not clean

Clean = no outputs or execution counts, one code cell tagged `parameters` assigning the four common knobs, and
`helpers.pipeline.run.start` given the notebook's own file stem (the batch runner finds `results/<stem>.json`).
"""

from __future__ import annotations

import argparse
import ast
import logging
import re
import sys
from pathlib import Path

import nbformat
from papermill.translators import PythonTranslator

from helpers.lib import cli
from helpers.lib.paths import atomic_write_text

COMMON_KNOBS = ("params_file", "profile", "run_dir", "overrides")
TRANSIENT_NOTEBOOK_METADATA = ("papermill", "widgets", "signature")
TRANSIENT_CELL_METADATA = ("execution", "ExecuteTime", "papermill", "collapsed", "scrolled")
START_CALL = re.compile(r"\bstart\(\s*[\"']([^\"']+)[\"']")  # run.start("NN_name", ...)


def read(path: str | Path) -> nbformat.NotebookNode:
    """The notebook at `path` (nbformat v4); a file that is not a notebook is a ValueError naming it."""
    try:
        return nbformat.read(str(path), as_version=4)
    except Exception as e:  # nbformat raises several unrelated types for bad JSON / bad schema
        raise ValueError(f"{path}: not a readable notebook ({e})") from e


def parameters_cell(nb: nbformat.NotebookNode) -> tuple[int, nbformat.NotebookNode] | None:
    """(index, cell) of the first code cell tagged `parameters`, or None."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return i, cell
    return None


def strip(path: str | Path) -> bool:
    """Clear outputs, execution counts and transient metadata (and papermill's injected cell); True if changed."""
    path = Path(path)
    nb = read(path)
    before = nbformat.writes(nb)
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    for key in TRANSIENT_NOTEBOOK_METADATA:
        nb.metadata.pop(key, None)
    for cell in nb.cells:
        for key in TRANSIENT_CELL_METADATA:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    after = nbformat.writes(nb)
    if after == before:
        return False
    atomic_write_text(path, after + "\n")
    return True


def papermill_parameters(source: str) -> set[str]:
    """The parameter names papermill recognises in a parameters cell (it warns and skips lines it cannot parse)."""
    logger = logging.getLogger("papermill")
    level, logger.level = logger.level, logging.ERROR
    try:
        return {p.name for p in PythonTranslator.inspect({"source": source})}
    finally:
        logger.setLevel(level)


def check(path: str | Path) -> list[str]:
    """What is wrong with the notebook at `path` (empty when it is clean), each message naming the file."""
    path = Path(path)
    try:
        nb = read(path)
    except ValueError as e:
        return [str(e)]
    problems = []
    dirty = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)
    ]
    if dirty:
        problems.append(f"{path}: cells {dirty} have outputs or execution counts (run `make strip`)")
    found = parameters_cell(nb)
    if found is None:
        problems.append(f"{path}: no code cell tagged `parameters`")
        return problems
    index, cell = found
    try:
        tree = ast.parse(cell.source)
    except SyntaxError as e:
        return problems + [f"{path}: the parameters cell (cell {index}) is not valid Python ({e.msg}, line {e.lineno})"]
    assigned = {
        t.id
        for node in tree.body
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(t, ast.Name)
    }
    missing = [k for k in COMMON_KNOBS if k not in assigned]
    if missing:
        problems.append(f"{path}: the parameters cell (cell {index}) lacks {', '.join(missing)}")
    unseen = sorted(assigned - papermill_parameters(cell.source))
    if unseen:
        problems.append(
            f"{path}: papermill cannot parse the parameters cell's lines for {', '.join(unseen)} "
            "(keep one `name = value  # comment` per line, with no '=' inside the comment)"
        )
    names = {m for c in nb.cells if c.cell_type == "code" for m in START_CALL.findall(c.source)}
    if names - {path.stem}:
        problems.append(
            f"{path}: helpers.pipeline.run.start is given {', '.join(sorted(names))} but the file is "
            f"{path.stem} (the batch runner looks for results/{path.stem}.json)"
        )
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.pipeline.notebooks", description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["strip", "check"])
    ap.add_argument("files", nargs="+", type=Path)
    args = ap.parse_args(argv)
    if args.command == "strip":
        for f in args.files:
            print(f"{f}: {'stripped' if strip(f) else 'already clean'}")
        return 0
    problems = [p for f in args.files for p in check(f)]
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    cli.run(main)
