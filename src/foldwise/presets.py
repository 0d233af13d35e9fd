"""`python -m foldwise.presets NAME`: switch params.yaml to a reference task.

A preset (`tasks/NAME.yaml`) lists the params that differ between tasks; it is merged into
params.yaml key by key, keeping every other value and the file's comments. Every preset sets
the same keys, so switching from any task to another gives the same params.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ruamel.yaml import YAML

from foldwise.errors import InputError
from foldwise.files import atomic_path


def merge(target, overlay, path=""):
    for key, value in overlay.items():
        where = f"{path}{key}"
        if key not in target:
            raise InputError(f"preset sets {where!r}, which params.yaml does not have")
        if isinstance(value, dict):
            merge(target[key], value, f"{where}.")
        else:
            target[key] = value


def apply(name: str, params_file: str | Path = "params.yaml", tasks_dir: str | Path = "tasks") -> None:
    preset = Path(tasks_dir) / f"{name}.yaml"
    if not preset.is_file():
        names = sorted(p.stem for p in Path(tasks_dir).glob("*.yaml"))
        raise InputError(f"no preset {preset}; presets: {', '.join(names)}")
    rewrite(params_file, YAML().load(preset.read_text()))


def rewrite(params_file: str | Path, overlay: dict) -> None:
    """Set `overlay`'s keys (a nested mapping) in params.yaml, keeping every other value and
    the file's comments; written atomically."""
    yaml = YAML()
    yaml.preserve_quotes = True
    params = yaml.load(Path(params_file).read_text())
    merge(params, overlay)
    with atomic_path(params_file) as tmp:
        with open(tmp, "w") as f:
            yaml.dump(params, f)


def main() -> None:
    from foldwise import stage

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="statefarm, keypoints, dogscats or folders")
    args = parser.parse_args()
    stage.run(lambda: apply(args.name))


if __name__ == "__main__":
    main()
