"""params.yaml against its schema: a misspelt or missing key stops every stage with its name,
instead of a feature silently switched off by a default."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from foldwise import params as P
from foldwise.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, change):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    change(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_the_project_params_and_every_preset_pass_the_schema(tmp_path):
    P.load(ROOT / "params.yaml")
    for preset in sorted((ROOT / "tasks").glob("*.yaml")):
        from foldwise.presets import apply
        target = tmp_path / "params.yaml"
        target.write_text((ROOT / "params.yaml").read_text())
        apply(preset.stem, target, ROOT / "tasks")
        P.load(target)


def test_a_misspelt_augmentation_key_is_named(tmp_path):
    def misspell(p):
        p["train"]["augment"]["rotation"] = p["train"]["augment"].pop("rotate")
    with pytest.raises(InputError, match=r"unknown key\(s\) 'train.augment.rotation'"):
        P.load(write(tmp_path, misspell))


def test_a_missing_key_and_a_wrong_type_are_named(tmp_path):
    with pytest.raises(InputError, match="missing key 'train.warmup_lr'"):
        P.load(write(tmp_path, lambda p: p["train"].pop("warmup_lr")))
    with pytest.raises(InputError, match=r"train.epochs='ten' must be int"):
        P.load(write(tmp_path, lambda p: p["train"].update(epochs="ten")))
    with pytest.raises(InputError, match=r"train.amp=1 must be bool"):
        P.load(write(tmp_path, lambda p: p["train"].update(amp=1)))
    P.load(write(tmp_path, lambda p: p.update(lr=1)))  # `-S lr=1` is a number too


def test_a_stage_reports_the_bad_key_in_one_line(tmp_path):
    path = write(tmp_path, lambda p: p["train"].update(schedular="cosine"))
    res = subprocess.run([sys.executable, str(ROOT / "stages/split.py"), "x", "y", "z", "w"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == (f"error: {path.name}: unknown key(s) 'train.schedular' (misspelt? "
                                  f"known here: {', '.join(P.names(P.Train))})")


def test_values_arrive_typed_and_evolve_checks_like_load(tmp_path):
    """After load every value has its declared type: an int given for a float key is a float
    (`-S lr=1`), sections are objects; `evolve` changes nested keys and keeps the rest, and
    refuses a mistyped value as load does."""
    params = P.load(write(tmp_path, lambda p: p.update(lr=1)))
    assert params.lr == 1.0 and isinstance(params.lr, float)
    assert isinstance(params.train.augment, P.Augment) and isinstance(params.train.epochs, int)
    changed = P.evolve(params.train, {"augment": {"rotate": 40}, "epochs": 3})
    assert changed.augment.rotate == 40.0 and changed.augment.shift == params.train.augment.shift
    assert changed.epochs == 3 and params.train.epochs != 3  # the original is untouched
    with pytest.raises(InputError, match=r"train.epochs='3' must be int|epochs='3' must be int"):
        P.evolve(params.train, {"epochs": "3"})
    assert params.as_dict()["train"]["augment"]["rotate"] == params.train.augment.rotate
