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
    assert set(presets) == {"statefarm", "keypoints", "dogscats", "folders", "multilabel", "smallimages"}
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
    with pytest.raises(InputError, match="presets: dogscats, folders, keypoints, multilabel, smallimages, statefarm"):
        apply("birds", tmp_path / "params.yaml", ROOT / "tasks")


def test_the_command_prints_each_key_it_changed_old_to_new(tmp_path):
    """`python -m foldwise.presets folders` printed nothing; now every key it changed, old ->
    new, as the file said before and says after, and a second switch says nothing changed."""
    import subprocess
    import sys
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (tmp_path / "tasks").symlink_to(ROOT / "tasks")
    before = yaml.safe_load((tmp_path / "params.yaml").read_text())

    def switch():
        res = subprocess.run([sys.executable, "-m", "foldwise.presets", "folders"], cwd=tmp_path,
                             capture_output=True, text=True, check=True)
        return res.stdout

    out = switch()
    after = yaml.safe_load((tmp_path / "params.yaml").read_text())
    changed = [line.split()[0] for line in out.splitlines()[1:]]
    assert changed and all(line.startswith("  ") for line in out.splitlines()[1:])
    for key in changed:
        old, new = before, after
        for part in key.split("."):
            old, new = old[part], new[part]
        assert f"{key}" in out and f"{old!r} -> {new!r}" in out
    assert f"changed {len(changed)} keys" in out.splitlines()[0]
    assert "  data.source" in out and "'statefarm' -> 'folders'" in out
    assert "nothing changed" in switch()
