"""The package's layers hold: no import cycle, no upward import, and a library that imports without the notebook stack.

Layers, bottom up: `helpers.lib` (library) < `helpers.experiments` (one module per notebook) < `helpers.pipeline`.
Every `import` statement counts, also one inside a function.
"""

import ast
import subprocess
import sys

import pytest

from helpers.lib.paths import REPO

LAYERS = {"lib": 0, "experiments": 1, "pipeline": 2}
NOTEBOOK_STACK = ("pandas", "matplotlib", "seaborn", "papermill")


def module_name(path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


MODULES = {module_name(p): p for p in sorted((REPO / "helpers").rglob("*.py"))}


def imports(module: str) -> set[str]:
    """The modules `module` imports (helpers modules as module names, others as their top-level package)."""
    tree = ast.parse(MODULES[module].read_text())
    package = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            names = [f"{base}.{a.name}" for a in node.names]
            found |= {n for n in names if n in MODULES} or {base}
    return {n if n in MODULES else n.split(".")[0] if not n.startswith("helpers") else n for n in found}


def graph() -> dict[str, set[str]]:
    return {m: {n for n in imports(m) if n in MODULES and n != m} for m in MODULES}


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 2 else None


def test_every_module_is_in_a_layer():
    outside = [m for m in MODULES if m != "helpers" and layer(m) is None and m.count(".") > 1]
    assert not outside and set(m.split(".")[1] for m in MODULES if m != "helpers") <= set(LAYERS), outside


def test_no_upward_import():
    upward = [
        f"{m} -> {n}"
        for m, deps in graph().items()
        for n in deps
        if layer(m) is not None and layer(n) is not None and layer(n) > layer(m)
    ]
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_no_import_cycle():
    g, state, cycles = graph(), {}, []

    def visit(m, path):
        state[m] = "open"
        for n in sorted(g[m]):
            if state.get(n) == "open":
                cycles.append(" -> ".join(path[path.index(n) :] + [n]))
            elif n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_library_source_never_imports_the_notebook_stack():
    bad = {m: sorted(imports(m) & set(NOTEBOOK_STACK)) for m in MODULES if layer(m) == 0}
    assert not {m: v for m, v in bad.items() if v}


# Run in a fresh interpreter: records who imports a notebook-stack package. A third-party library may load one
# (transformers' Trainer imports datasets, which imports pandas); a helpers module may not.
WHO_IMPORTS = """
import sys
STACK = set(sys.argv[2].split(","))
seen = []
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in STACK:
            f = sys._getframe(1)
            while f and f.f_globals.get("__name__", "").startswith(("importlib", "_frozen_importlib")):
                f = f.f_back
            seen.append((name, f.f_globals.get("__name__", "?") if f else "?"))
        return None
sys.meta_path.insert(0, Watch())
__import__(sys.argv[1])
print(";".join(f"{who} imports {name}" for name, who in seen if who.startswith("helpers")))
"""


@pytest.mark.slow
@pytest.mark.parametrize("module", [m for m in MODULES if layer(m) == 0])
def test_library_module_imports_alone_without_the_notebook_stack(module):
    """In a fresh interpreter, importing a library module makes no helpers module import pandas / matplotlib /
    seaborn / papermill."""
    out = subprocess.run(
        [sys.executable, "-c", WHO_IMPORTS, module, ",".join(NOTEBOOK_STACK)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("module", ["helpers.lib.rl_extra", "helpers.lib.monitor", "helpers.lib.adaptive"])
def test_a_training_callback_loads_no_notebook_stack_package_at_all(module):
    """The TrainerCallbacks a GPU training script imports load none of pandas / matplotlib / seaborn / papermill,
    not even through a third-party library."""
    code = f"import sys, {module}; print([m for m in {NOTEBOOK_STACK!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_the_import_watch_names_a_helpers_importer(tmp_path):
    """The watch used above reports a helpers module that imports pandas (it can fail)."""
    (tmp_path / "helpers").mkdir()
    (tmp_path / "helpers" / "__init__.py").write_text("")
    (tmp_path / "helpers" / "bad.py").write_text("import pandas\n")
    out = subprocess.run(
        [sys.executable, "-c", WHO_IMPORTS, "helpers.bad", "pandas"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={"PYTHONPATH": str(tmp_path), "PATH": ""},
    )
    assert out.stdout.strip() == "helpers.bad imports pandas", (out.stdout, out.stderr[-500:])


def test_the_checker_sees_a_cycle_and_an_upward_import(monkeypatch):
    """The graph checks fail on a planted cycle and a planted upward import (they can fail)."""
    fake = {
        "helpers.lib.a": {"helpers.lib.b"},
        "helpers.lib.b": {"helpers.lib.a", "helpers.pipeline.c"},
        "helpers.pipeline.c": set(),
    }
    monkeypatch.setattr(sys.modules[__name__], "graph", lambda: fake)
    with pytest.raises(AssertionError, match="helpers.lib.a -> helpers.lib.b -> helpers.lib.a"):
        test_no_import_cycle()
    with pytest.raises(AssertionError, match="helpers.lib.b -> helpers.pipeline.c"):
        test_no_upward_import()
