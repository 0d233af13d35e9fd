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
                                  f"known here: {', '.join(P.SCHEMA['train'])})")
