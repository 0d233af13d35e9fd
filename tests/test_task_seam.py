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


def test_the_type_checker_refuses_a_task_kind_missing_a_member_of_the_protocol(tmp_path):
    """`tasks.Task` is the shape every kind provides: a kind with only `monitor` returned where
    a Task is expected is a type error, planted outside the source tree and checked with the
    project's own settings; the real kinds pass."""
    import subprocess
    import sys
    planted = tmp_path / "planted_task.py"
    planted.write_text(
        "from foldwise.tasks import Classification, Keypoints, Task\n"
        "class Shapeless:\n"
        "    monitor = 'logloss'\n"
        "def real() -> list[Task]:\n"
        "    return [Classification(['a', 'b']), Keypoints(['x', 'y'], (96, 96))]\n"
        "def shapeless() -> Task:\n"
        "    return Shapeless()\n")
    res = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                          "--cache-dir", str(tmp_path / "cache"), str(planted)],
                         capture_output=True, text=True, cwd=ROOT)
    errors = [line for line in res.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1 and 'got "Shapeless", expected "Task"' in errors[0], res.stdout
