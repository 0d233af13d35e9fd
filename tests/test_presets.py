from pathlib import Path

import pytest
import yaml

from foldwise.errors import InputError
from foldwise.presets import apply

ROOT = Path(__file__).resolve().parents[1]


def keys(d, prefix=""):
    out = set()
    for k, v in d.items():
        out |= keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
    return out


def test_every_preset_sets_the_same_keys_and_all_exist_in_params():
    presets = {p.stem: yaml.safe_load(p.read_text()) for p in (ROOT / "tasks").glob("*.yaml")}
    assert set(presets) == {"statefarm", "keypoints", "dogscats", "folders", "multilabel"}
    key_sets = {name: keys(p) for name, p in presets.items()}
    assert len({frozenset(k) for k in key_sets.values()}) == 1, key_sets
    params_keys = keys(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert key_sets["statefarm"] <= params_keys


def test_switching_keeps_other_values_and_comments_and_round_trips(tmp_path):
    params = tmp_path / "params.yaml"
    original = (ROOT / "params.yaml").read_text()
    params.write_text(original)
    apply("keypoints", params, ROOT / "tasks")
    switched = yaml.safe_load(params.read_text())
    assert switched["data"]["source"] == "keypoints" and switched["preprocess"]["mode"] == "L"
    assert switched["lr"] == yaml.safe_load(original)["lr"]
    assert "# The single source of hyperparameters" in params.read_text()
    apply("statefarm", params, ROOT / "tasks")
    assert yaml.safe_load(params.read_text()) == yaml.safe_load(original)


def test_unknown_preset_lists_the_known_ones(tmp_path):
    with pytest.raises(InputError, match="presets: dogscats, folders, keypoints, multilabel, statefarm"):
        apply("birds", tmp_path / "params.yaml", ROOT / "tasks")
