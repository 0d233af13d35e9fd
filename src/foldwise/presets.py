"""`python -m foldwise.presets NAME`: switch params.yaml to a reference task.

A preset (`tasks/NAME.yaml`) lists the params that differ between tasks; it is merged into
params.yaml key by key, keeping every other value and the file's comments. Every preset sets
the same keys, so switching from any task to another gives the same params.
"""
from __future__ import annotations

from pathlib import Path

from ruamel.yaml import YAML

from foldwise.errors import InputError
from foldwise.files import atomic_path


def merge(target, overlay, path="") -> list[tuple[str, object, object]]:
    """Set `overlay`'s keys in `target`; returns (key, old value, new value) of each key whose
    value changed."""
    changed = []
    for key, value in overlay.items():
        where = f"{path}{key}"
        if key not in target:
            raise InputError(f"preset sets {where!r}, which params.yaml does not have")
        if isinstance(value, dict):
            changed += merge(target[key], value, f"{where}.")
        else:
            if target[key] != value:
                changed.append((where, target[key], value))
            target[key] = value
    return changed


def apply(name: str, params_file: str | Path = "params.yaml",
          tasks_dir: str | Path = "tasks") -> list[tuple[str, object, object]]:
    """Switch params.yaml to preset `name`; returns the keys it changed, old -> new."""
    preset = Path(tasks_dir) / f"{name}.yaml"
    if not preset.is_file():
        raise InputError(f"no preset {preset}; presets: {', '.join(names(tasks_dir))}")
    return rewrite(params_file, YAML().load(preset.read_text()))


def names(tasks_dir: str | Path = "tasks") -> list[str]:
    return sorted(p.stem for p in Path(tasks_dir).glob("*.yaml"))


def rewrite(params_file: str | Path, overlay: dict) -> list[tuple[str, object, object]]:
    """Set `overlay`'s keys (a nested mapping) in params.yaml, keeping every other value and
    the file's comments; written atomically. Returns the keys changed, old -> new."""
    yaml = YAML()
    yaml.preserve_quotes = True
    params = yaml.load(Path(params_file).read_text())
    changed = merge(params, overlay)
    with atomic_path(params_file) as tmp:
        with open(tmp, "w") as f:
            yaml.dump(params, f)
    return changed


def report(name: str, changed, params_file="params.yaml") -> str:
    """What a switch did, for a person: each key changed, old -> new."""
    if not changed:
        return f"{params_file} already holds every value of the {name} preset: nothing changed"
    lines = [f"{params_file}: the {name} preset changed {len(changed)} "
             f"key{'s' if len(changed) > 1 else ''} (tasks/{name}.yaml):"]
    width = max(len(key) for key, _, _ in changed)
    lines += [f"  {key:<{width}}  {plain(old)!r} -> {plain(new)!r}" for key, old, new in changed]
    return "\n".join(lines)


def plain(value):
    """A YAML value as plain Python (ruamel's sequences and scalars print as their type)."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    return value


def main() -> None:
    from foldwise import stage

    parser = stage.parser(__doc__, prog="python -m foldwise.presets")
    parser.add_argument("name", help=f"one of {', '.join(names())} (tasks/NAME.yaml)")
    args = parser.parse_args()
    stage.run(lambda: print(report(args.name, apply(args.name))))


if __name__ == "__main__":
    main()
