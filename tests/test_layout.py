"""Know your room: every stage in dvc.yaml has its body at one predictable place and name
(docs/pipeline.md states the rule), no two modules of foldwise import each other, and no
function takes a long parameter list or runs long."""
import ast
import dataclasses
import importlib
import re
import sys
import typing
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
STEPS = ("data", "train", "ensemble", "deploy")
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def body_module(stage: str) -> str:
    """`foldwise.<step>.<stage>`: the one step folder holding a module named as the stage."""
    found = [step for step in STEPS if (SRC / "foldwise" / step / f"{stage}.py").is_file()]
    assert len(found) == 1, f"stage {stage}: a body module in one of {STEPS}, found in {found}"
    return f"foldwise.{found[0]}.{stage}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_runs_its_body_foldwise_step_stage_run_with_its_paths(stage):
    """`stages/X.py` parses its arguments into `foldwise.<step>.X.Paths` (a dataclass, one field
    per argument of the command in dvc.yaml, each with its help) and calls
    `foldwise.<step>.X.run` once."""
    module = body_module(stage)
    step = module.split(".")[1]
    script = (ROOT / "stages" / f"{stage}.py").read_text()
    assert f"from foldwise.{step} import {stage}\n" in script, f"stages/{stage}.py: import {module}"
    assert script.count(f"{stage}.run(") == 1 and f"stage.paths(__doc__, {stage}.Paths)" in script
    body = importlib.import_module(module)
    assert callable(body.run) and dataclasses.is_dataclass(body.Paths)
    hints = typing.get_type_hints(body.Paths, include_extras=True)
    assert all(hints[f.name].__metadata__ for f in dataclasses.fields(body.Paths))
    cmd = " ".join((STAGES[stage].get("do") or STAGES[stage])["cmd"].split())
    words = cmd.split()
    assert words[:2] == ["python", f"stages/{stage}.py"], cmd
    assert len(words) - 2 == len(dataclasses.fields(body.Paths)), (cmd, body.Paths)


def imports(path: Path, package: str) -> set[str]:
    """The foldwise modules `path` imports anywhere in it (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {name for name in found if name.startswith("foldwise")}


def test_no_two_modules_import_each_other_even_inside_a_function():
    """A cycle, direct or through others, is a module pair that cannot be read alone (the old
    distill stage and its run imported each other)."""
    modules = {}
    for path in (SRC / "foldwise").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    edges = {m: {n for n in imports(p, m if p.name == "__init__.py" else m.rpartition(".")[0])
                 if n in modules and n != m and not m.startswith(n + ".") and n != "foldwise"}
             for m, p in modules.items()}
    sys.setrecursionlimit(10_000)
    state, cycles = {}, []

    def visit(m, trail):
        state[m] = "open"
        for n in sorted(edges[m]):
            if state.get(n) == "open":
                cycles.append(trail[trail.index(n):] + [n])
            elif n not in state:
                visit(n, trail + [n])
        state[m] = "done"

    for m in sorted(modules):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_pipeline_doc_names_each_stage_body():
    """docs/pipeline.md's table lists, for every stage, the body the rule gives it."""
    doc = (ROOT / "docs/pipeline.md").read_text()
    for stage in STAGES:
        step = body_module(stage).split(".")[1]
        row = re.search(rf"^\| {re.escape(stage)}(@k)? \|.*$", doc, re.M)
        assert row and f"`{step}/{stage}.py`" in row.group(0), stage


MAX_PARAMETERS, MAX_LINES = 6, 50


def timm_model_classes(tree: ast.Module) -> set[str]:
    """Classes that timm's `create_model` builds (a module registering models with
    `register_model`): their constructors take the network's keywords by name, as timm's own do."""
    registers = any(isinstance(n, ast.Name) and n.id == "register_model" for n in ast.walk(tree))
    return {n.name for n in tree.body if isinstance(n, ast.ClassDef)} if registers else set()


def test_functions_take_a_settings_object_not_a_long_list_and_stay_short():
    """At most MAX_PARAMETERS parameters (self and cls aside; settings travel as one typed
    object) and MAX_LINES lines, in every function of src/foldwise; a timm model's constructor
    keeps timm's keyword convention."""
    found = []
    for path in sorted((SRC / "foldwise").rglob("*.py")):
        tree = ast.parse(path.read_text())
        exempt = {id(f) for c in ast.walk(tree) if isinstance(c, ast.ClassDef)
                  and c.name in timm_model_classes(tree) for f in c.body
                  if isinstance(f, ast.FunctionDef) and f.name == "__init__"}
        for n in ast.walk(tree):
            if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            a = n.args
            count = len([x for x in a.posonlyargs + a.args + a.kwonlyargs
                         if x.arg not in ("self", "cls")])
            lines = n.end_lineno - n.lineno + 1
            if (count > MAX_PARAMETERS and id(n) not in exempt) or lines > MAX_LINES:
                found.append(f"{path.relative_to(SRC)}:{n.lineno} {n.name}: {count} parameters, "
                             f"{lines} lines")
    assert not found, "\n".join(found)
