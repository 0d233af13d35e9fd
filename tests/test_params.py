"""params.yaml against its schema: a misspelt or missing key stops every stage with its name,
instead of a feature silently switched off by a default."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from foldwise import names, params as P
from foldwise.data import check
from foldwise.errors import InputError
from helpers import copy_params

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, change):
    """A copy of the project's params (params.yaml, sample.yaml) with `change` applied."""
    path = copy_params(tmp_path)
    P.change_files(tmp_path, change)
    return path


def test_the_project_params_and_every_preset_pass_the_schema(tmp_path):
    P.load(ROOT / "params.yaml")
    for preset in sorted((ROOT / "tasks").glob("*.yaml")):
        from foldwise.presets import apply
        target = copy_params(tmp_path)
        apply(preset.stem, target, ROOT / "tasks")
        loaded = P.load(target)
        values = yaml.safe_load(preset.read_text())  # the preset's own values land
        assert loaded.data.source == values["data"]["source"]
        assert loaded.train.model == values["train"]["model"]
        assert loaded.train.ema.decay == values["train"]["ema"]["decay"]
        assert loaded.tta.shift == values["tta"]["shift"]


def test_the_samples_sizes_live_in_sample_yaml_and_a_bad_one_names_that_file(tmp_path):
    """params.yaml holds hyperparameters only: the embedded sample's 17 sizes moved to
    sample.yaml beside it, read into the same typed object; a sample section left in
    params.yaml is refused with where it belongs, a bad size names sample.yaml."""
    params = copy_params(tmp_path)
    assert "sample" not in yaml.safe_load(params.read_text())
    assert P.load(params).sample.statefarm.drivers == yaml.safe_load(
        (ROOT / "sample.yaml").read_text())["sample"]["statefarm"]["drivers"]
    with pytest.raises(InputError, match=r"sample.yaml: sample.statefarm.drivers=-1 is out of range"):
        P.load(write(tmp_path, lambda p: p["sample"]["statefarm"].update(drivers=-1)))
    copy_params(tmp_path)
    old = yaml.safe_load(params.read_text())
    params.write_text(yaml.safe_dump({**old, "sample": {"seed": 0}}))
    with pytest.raises(InputError, match=r"params.yaml: 'sample' belongs in .*sample.yaml"):
        P.load(params)
    (tmp_path / "sample.yaml").unlink()
    params.write_text(yaml.safe_dump(old))
    with pytest.raises(InputError, match=r"sample.yaml: not found"):
        P.load(params)


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


@pytest.mark.parametrize("change, message", [
    (lambda p: p["stack"].update(model="logistc"),
     "stack.model='logistc' is not allowed; allowed: '', 'logistic', 'hist_gradient_boosting'"),
    (lambda p: p["bag"].update(mean="arith"), "bag.mean='arith' is not allowed; allowed: 'arithmetic', 'geometric'"),
    (lambda p: p["train"].update(scheduler="cosin"), "train.scheduler='cosin' is not allowed; allowed: 'cosine'"),
    (lambda p: p["train"].update(epochs=-1), "train.epochs=-1 is out of range; allowed: >= 1"),
    (lambda p: p.update(lr=-1), "lr=-1.0 is out of range; allowed: > 0"),
    (lambda p: p["train"]["ema"].update(decay=1.0), "train.ema.decay=1.0 is out of range; allowed: >= 0 and < 1"),
    (lambda p: p["preprocess"].update(crop=[0, 0, 1.5, 1]), "preprocess.crop=[0, 0, 1.5, 1] is out of range"),
    (lambda p: p.update(folds=[0]), "folds=[0] must be 0, 1, ..., k-1 with k >= 2"),
    (lambda p: p.update(folds=[0, 2]), "folds=[0, 2] must be 0, 1, ..., k-1"),
    (lambda p: p["stack"].update(model="logistic", neighbours=3), "stack.neighbours=3 needs neighbours.k >= 3"),
    (lambda p: p["mlflow"].update(experiment=""), "mlflow.experiment may not be empty"),
])
def test_a_value_outside_the_schema_names_the_key_the_value_and_the_allowed_ones(tmp_path, change, message):
    """Before the schema held allowed values, each of these loaded and failed (or silently did
    something else) in the stage that used it, after every fold had trained."""
    with pytest.raises(InputError) as err:
        P.load(write(tmp_path, change))
    assert message in str(err.value)


@pytest.mark.parametrize("change, message", [
    (lambda p: p["train"].update(model="test_resnt"), "train.model='test_resnt' is not a timm model; close ones: test_resnet"),
    (lambda p: p["distill"].update(model="resnet10"), "distill.model='resnet10' is not a timm model"),
    (lambda p: p["train"].update(optimizer="adamx"), "train.optimizer='adamx' is not a timm optimizer; close ones: adamax"),
])
def test_timm_names_are_checked_against_timms_own_registries(tmp_path, change, message):
    with pytest.raises(InputError) as err:
        check.run(write(tmp_path, change), check.Paths(tmp_path / "checked"))
    assert message in str(err.value) and "git checkout params.yaml" in str(err.value)
    assert not (tmp_path / "checked").exists()
    check.run(write(tmp_path, lambda p: p["distill"].update(model="resnet10t")), check.Paths(tmp_path / "checked"))
    assert (tmp_path / "checked").read_text() == check.CHECKED


def test_the_schemas_choices_are_the_ones_the_code_dispatches_on():
    from foldwise.ensemble import bag, stack_model
    from foldwise.train import pseudo_labels
    assert P.allowed(P.Bag, "mean") == bag.MEANS
    assert set(P.allowed(P.Stack, "model")) == {"", *stack_model.MODELS}
    assert P.allowed(P.Pseudo, "mode") == pseudo_labels.MODES
    from foldwise.data.sources import SOURCES
    assert set(P.allowed(P.Data, "source")) == set(SOURCES)
    import torch
    from foldwise.train.loop import create_scheduler
    base = P.load(ROOT / "params.yaml").train
    for name in P.allowed(P.Train, "scheduler"):  # every one makes a schedule of timm's
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        assert create_scheduler(opt, P.evolve(base, {"scheduler": name}), 0.1, 4) is not None, name


def test_timm_names_come_from_a_per_version_cache_and_a_miss_is_looked_up_live(tmp_path, monkeypatch):
    """Importing timm cost the check stage 4 of its 4.3 s in every pipeline whose params changed:
    the names are kept per timm version; only a hit is trusted."""
    import json
    from importlib.metadata import version
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    known = names.known_timm_names()  # the first: from timm itself, then kept
    path = tmp_path / "cache" / "foldwise" / f"timm-{version('timm')}.json"
    assert "resnet10t" in known["model"] and "adamw" in known["optimizer"] and path.is_file()
    assert "small_resnet20" in known["model"]  # foldwise's networks for small images, registered
    path.write_text(json.dumps({"model": ["test_resnet"], "optimizer": ["adamw"]}))
    assert names.known_timm_names()["model"] == {"test_resnet"}  # read back, timm not asked
    ok = write(tmp_path, lambda p: p["distill"].update(model="resnet10t"))  # a miss: asked live
    check.run(ok, check.Paths(tmp_path / "checked"))
    with pytest.raises(InputError, match="distill.model='resnet10' is not a timm model"):
        check.run(write(tmp_path, lambda p: p["distill"].update(model="resnet10")), check.Paths(tmp_path / "checked"))


def test_dvc_exp_run_set_changes_only_the_values_it_sets_in_params_yaml(tmp_path):
    """`dvc exp run -S` rewrote params.yaml: flow lists exploded into block lists and a comment
    after a list went with it. Through DVC's own code for `-S` (dvc.utils.hydra's
    apply_overrides), a top-level, a nested, a boolean and a list value changed then set back
    leave the file byte for byte as it was, and in between only their lines differ."""
    import difflib

    from dvc.utils.hydra import apply_overrides
    path = tmp_path / "params.yaml"
    original = (ROOT / "params.yaml").read_text()
    path.write_text(original)
    before = yaml.safe_load(original)
    apply_overrides(path, ["lr=1e-4", "train.epochs=3", "train.augment.hflip=true",
                           "folds=[0,1]", "preprocess.crop=[0.1,0.0,1.0,1.0]"])
    changed = path.read_text()
    after = yaml.safe_load(changed)
    assert (after["lr"], after["train"]["epochs"], after["folds"]) == (1e-4, 3, [0, 1])
    assert after["preprocess"]["crop"] == [0.1, 0.0, 1.0, 1.0] and after["train"]["augment"]["hflip"]
    removed = [line for line in difflib.ndiff(original.splitlines(), changed.splitlines())
               if line.startswith("- ")]
    assert [line[2:].split("#")[0].strip() for line in removed] == [
        "- 2", "- 3", "- 4", "lr: 0.002", "- 0.0", f"epochs: {before['train']['epochs']}",
        "hflip: false"]
    apply_overrides(path, [f"lr={before['lr']}", f"train.epochs={before['train']['epochs']}",
                           "train.augment.hflip=false", "folds=[0,1,2,3,4]",
                           "preprocess.crop=[0.0,0.0,1.0,1.0]"])
    assert path.read_text() == original
