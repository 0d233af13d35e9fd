"""dvc.yaml declares everything a stage reads: otherwise DVC keeps, or restores from its
run-cache, results that are stale."""
import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "foldwise"
# modules that shape no output: error types, logging, writing files, reading params.yaml
# (whose values DVC tracks key by key), MLflow bookkeeping
NEUTRAL = {"errors", "stage", "files", "params", "tracking", "__init__"}


def imported_modules(path: Path) -> set[str]:
    """foldwise modules `path` imports, as names relative to the package ('sources' for the
    package of sources, which is imported by name at run time)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("foldwise"):
            rest = node.module.split(".")[1:]
            if rest:
                found.add(rest[0])
            else:
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names
                         if a.name.startswith("foldwise."))
    return found


def closure(script: Path) -> set[str]:
    todo, seen = list(imported_modules(script)), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        module = SRC / f"{name}.py"
        if name == "sources":
            for f in (SRC / "sources").glob("*.py"):
                todo.extend(imported_modules(f))
        elif module.is_file():
            todo.extend(imported_modules(module))
    return seen


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
    needed = {m for m in closure(ROOT / script) if m not in NEUTRAL}
    covered = {m for m in needed if f"src/foldwise/{m}.py" in deps or f"src/foldwise/{m}" in deps}
    assert needed == covered, f"{name}: add {sorted(needed - covered)} to its deps"


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
