"""dvc.yaml declares everything a stage reads: otherwise DVC keeps, or restores from its
run-cache, results that are stale."""
import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
# modules that shape no output: error types, logging, writing files, reading params.yaml
# (whose values DVC tracks key by key), MLflow bookkeeping
NEUTRAL = {f"src/foldwise/{m}.py" for m in ("errors", "stage", "files", "params", "tracking",
                                              "scale/twins")}  # when a stage runs, not what it writes


RUNTIME_PACKAGE = "foldwise.data.sources"


def module_file(dotted: str) -> Path | None:
    """The file of a foldwise module, or of a package's `__init__.py`."""
    base = SRC.joinpath(*dotted.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_files(path: Path) -> set[Path]:
    """foldwise files `path` imports: `from foldwise.x import y` is module x.y where that is a
    module, else x. Every module of `data.sources` counts (it imports its sources by name at
    run time)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "foldwise":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                names.add(sub if module_file(sub) else node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] == "foldwise")
    found = {module_file(n) for n in names} - {None}
    if any(n.startswith(RUNTIME_PACKAGE) for n in names):
        found.update((SRC / "foldwise" / "data" / "sources").glob("*.py"))
    return found


def doc_only(path: Path) -> bool:
    """An `__init__.py` that holds its package's docstring and nothing else."""
    body = ast.parse(path.read_text()).body
    return path.name == "__init__.py" and all(isinstance(n, ast.Expr) for n in body)


def closure(script: Path) -> set[str]:
    todo, seen = list(imported_files(script)), set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(imported_files(path))
    return {str(p.relative_to(ROOT)) for p in seen if not doc_only(p)}


def resolved_stages():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())

    def value(m):
        node = params
        for part in m.group(1).split("."):
            node = node[part] if part != "item" else 0
            if part == "item":
                return "0"
        return str(node)

    text = re.sub(r"\$\{([^}]+)\}", value, (ROOT / "dvc.yaml").read_text())
    stages = yaml.safe_load(text)["stages"]
    return {name: (s["do"] if "do" in s else s) for name, s in stages.items()}


def paths(entries):
    out = []
    for e in entries or []:
        out.extend(e if isinstance(e, dict) else [e])
    return out


@pytest.mark.parametrize("name", sorted(resolved_stages()))
def test_every_module_a_stage_imports_is_a_dependency(name):
    stage = resolved_stages()[name]
    deps = paths(stage.get("deps"))
    script = next(d for d in deps if d.startswith("stages/"))
    needed = closure(ROOT / script) - NEUTRAL
    covered = {m for m in needed if any(m == d or m.startswith(d.rstrip("/") + "/") for d in deps)}
    assert needed == covered, f"{name}: add {sorted(needed - covered)} to its deps"


def test_the_closure_follows_imports_into_subpackages():
    """The check above is only as good as its import resolution: the train stage reaches the
    loop through the fold's run, and the sources through the cache's callers."""
    train = closure(ROOT / "stages/train.py")
    assert {"src/foldwise/train/loop.py", "src/foldwise/train/augment.py",
            "src/foldwise/tasks.py", "src/foldwise/models.py"} <= train
    assert "src/foldwise/data/sources/statefarm.py" in closure(ROOT / "stages/sample.py")


@pytest.mark.parametrize("name", sorted(resolved_stages()))
def test_every_path_a_stage_command_names_is_a_dependency_or_an_output(name):
    stage = resolved_stages()[name]
    declared = paths(stage.get("deps")) + paths(stage.get("outs")) + paths(stage.get("metrics")) \
        + paths(stage.get("plots"))
    args = stage["cmd"].split()[2:]  # python stages/NAME.py ARGS...
    for arg in args:
        if arg.isdigit():
            continue
        ok = any(arg == d or d.startswith(arg.rstrip("/") + "/") for d in declared)
        assert ok, f"{name} reads or writes {arg!r}, which dvc.yaml does not declare"
