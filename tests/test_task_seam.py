"""The task seam is complete: every difference between task kinds is a member of the task's
class in `tasks.py`, so nothing else compares a task's kind (a third kind costs one class)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = {"classification", "keypoints", "multilabel"}


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def kind_checks(path: Path) -> list[str]:
    """Comparisons with a task kind's name, and reads of a `.kind` attribute, in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            names = [n.value for n in [node.left, *node.comparators]
                     if isinstance(n, ast.Constant) and isinstance(n.value, str)]
            if KINDS & set(names):
                found.append(f"{shown(path)}:{node.lineno}")
        elif isinstance(node, ast.Attribute) and node.attr == "kind":
            found.append(f"{shown(path)}:{node.lineno}")
    return found


def test_no_module_but_tasks_asks_a_task_its_kind():
    files = [p for p in (ROOT / "src").rglob("*.py") if p.name != "tasks.py"]
    files += list((ROOT / "stages").glob("*.py"))
    assert [hit for f in files for hit in kind_checks(f)] == []


def test_the_check_finds_a_planted_kind_check(tmp_path):
    """Planted in a file of its own, outside the source tree (a test writes nothing there)."""
    planted = tmp_path / "planted_seam_check.py"
    planted.write_text('if meta["task"] == "keypoints":\n    pass\nif task.kind:\n    pass\n')
    assert kind_checks(planted) == [f"{planted}:1", f"{planted}:3"]
