"""pyproject.toml and environment.yml agree; the README's test command is what CI runs; Makefile entry points exist."""

import importlib
import importlib.util
import re

import pytest
import yaml
from packaging.requirements import Requirement

from helpers.lib.paths import REPO


def requirements(specs):
    """{normalized name: (specifier set, extras)} of requirement strings."""
    reqs = [Requirement(s) for s in specs]
    return {re.sub(r"[-_.]+", "-", r.name).lower(): (r.specifier, frozenset(r.extras)) for r in reqs}


def test_pyproject_and_environment_list_the_same_packages():
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python >= 3.11")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    ours, theirs = requirements(pyproject), requirements(pip)
    assert set(ours) == set(theirs), (
        f"only in pyproject: {set(ours) - set(theirs)}; only in environment.yml: {set(theirs) - set(ours)}"
    )
    different = {name: (str(ours[name][0]), str(theirs[name][0])) for name in ours if ours[name] != theirs[name]}
    assert not different, f"version specs differ (pyproject, environment.yml): {different}"
    assert len(ours) >= 10  # the comparison really read both lists


def ci_commands():
    """The commands .ci/run executes (comments, `set` and `cd` lines left out)."""
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    return [line for line in lines if line and not line.startswith(("#", "set ", "cd "))]


def test_readme_test_command_is_what_ci_runs():
    readme = REPO / "README.md"
    if not readme.is_file():
        pytest.skip("README.md does not exist yet")
    commands = ci_commands()
    assert commands == ["make test"]
    code = "\n".join(re.findall(r"```[a-z]*\n(.*?)```", readme.read_text(), re.S))
    code_lines = [line.split("#")[0].strip() for line in code.splitlines()]
    assert all(c in code_lines for c in commands), f"README.md code blocks do not show CI's command {commands}"


def test_makefile_modules_exist():
    modules = set(re.findall(r"-m (helpers[\w.]+)", (REPO / "Makefile").read_text()))
    assert {"helpers.pipeline.batch", "helpers.pipeline.notebooks"} <= modules
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    assert not missing, f"Makefile calls modules that do not exist: {missing}"


def test_command_line_scripts_point_at_callables():
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python >= 3.11")
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"rlvr-batch", "rlvr-robustness", "rlvr-extrapolate"} <= set(scripts)
    for name, target in scripts.items():
        module, _, func = target.partition(":")
        assert callable(getattr(importlib.import_module(module), func)), f"{name} -> {target} is not callable"
