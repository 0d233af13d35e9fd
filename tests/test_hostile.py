"""Files a user did not make cannot do harm: paths that leave the data root, image bombs,
checkpoints that would run code. Each is refused with the file and row named, no traceback."""
import ast
import io
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from foldwise.data.cache import load_image
from foldwise.errors import InputError
from foldwise.data.sources import dogscats, folders, statefarm
from helpers import copy_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sf(statefarm_sample, tmp_path):
    root = tmp_path / "sf"
    shutil.copytree(statefarm_sample, root)
    return root


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "secret.jpg"  # outside every data root below
    Image.new("RGB", (8, 8)).save(path)
    return path


@pytest.mark.parametrize("img", ["../../../../secret.jpg", "/etc/hostname", ".."])
def test_a_state_farm_row_that_is_not_a_file_name_is_refused_naming_the_line(sf, img):
    csv = sf / "driver_imgs_list.csv"
    table = pd.read_csv(csv)
    table.loc[3, "img"] = img
    table.to_csv(csv, index=False)
    with pytest.raises(InputError, match=rf"{csv}, line 5: img '{img}' is not a plain file name"):
        statefarm.read(sf)


def test_a_state_farm_image_symlinked_outside_is_refused_naming_the_line(sf, secret):
    csv = sf / "driver_imgs_list.csv"
    row = pd.read_csv(csv).iloc[3]
    path = sf / "imgs/train" / row["classname"] / row["img"]
    path.unlink()
    path.symlink_to(secret)
    with pytest.raises(InputError, match=rf"{csv}, line 5: image path '.*{row['img']}' leads to "
                                         rf"{secret}, outside the data root"):
        statefarm.read(sf)


def test_a_symlinked_test_image_pointing_outside_is_refused(sf, secret):
    link = sf / "imgs/test/img_999999.jpg"
    link.symlink_to(secret)
    with pytest.raises(InputError, match=rf"{link}: image path 'imgs/test/img_999999.jpg' leads to "
                                         rf"{secret}, outside"):
        statefarm.read(sf)


def test_labels_csv_with_an_absolute_or_escaping_path_is_refused(tmp_path, secret):
    root = tmp_path / "f"
    folders.write_sample(root, classes=3, per_class=2, test=1, layout="csv", seed=0)
    csv = root / "labels.csv"
    table = pd.read_csv(csv)
    for bad, message in ((str(secret), "is absolute"), ("../secret.jpg", "outside the data root")):
        changed = table.copy()
        changed.loc[1, "image"] = bad
        changed.to_csv(csv, index=False)
        with pytest.raises(InputError, match=rf"{csv}, line 3: image path .*{message}"):
            folders.read(root)


def test_a_duplicated_labels_row_names_plain_line_numbers(tmp_path):
    root = tmp_path / "f"
    folders.write_sample(root, classes=3, per_class=2, test=1, layout="csv", seed=0)
    csv = root / "labels.csv"
    table = pd.read_csv(csv)
    pd.concat([table, table.iloc[[0]]]).to_csv(csv, index=False)
    with pytest.raises(InputError) as err:
        folders.read(root)
    assert f"{csv}, lines [2, {len(table) + 2}]: image" in str(err.value)
    assert "np." not in str(err.value)


def test_state_farm_duplicates_print_plain_line_numbers(sf):
    csv = sf / "driver_imgs_list.csv"
    table = pd.read_csv(csv)
    table.loc[5, "img"] = table.loc[0, "img"]
    table.loc[5, "classname"] = table.loc[0, "classname"]
    table.to_csv(csv, index=False)
    with pytest.raises(InputError, match=r"lines \[2, 7\]: image name '.*' listed twice"):
        statefarm.read(sf)


def test_a_dogs_vs_cats_file_linked_outside_is_refused(tmp_path, secret):
    root = tmp_path / "d"
    dogscats.write_sample(root, per_class=2, test=2, seed=0)
    (root / "train/cat.77.jpg").symlink_to(secret)
    with pytest.raises(InputError, match=r"cat.77.jpg: image path 'train/cat.77.jpg' leads to"):
        dogscats.read(root)


def bomb(path: Path, width: int, height: int) -> Path:
    """A valid 8x8 JPEG whose header claims width x height: a few hundred bytes."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 7] = height.to_bytes(2, "big")
    data[sof + 7:sof + 9] = width.to_bytes(2, "big")
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("width,height", [(60000, 60000), (12000, 10000)])
def test_an_image_bomb_is_refused_before_it_is_decoded(tmp_path, width, height):
    path = bomb(tmp_path / "bomb.jpg", width, height)
    assert path.stat().st_size < 1000
    with pytest.raises(InputError, match=rf"{path}: .*(decompression bomb|more than 100,000,000)"):
        load_image(path, 96, 128)


def test_a_stage_refuses_a_hostile_row_in_one_line_without_traceback(sf, tmp_path):
    csv = sf / "driver_imgs_list.csv"
    table = pd.read_csv(csv)
    table.loc[0, "img"] = "/etc/hostname"
    table.to_csv(csv, index=False)
    copy_params(tmp_path)
    res = subprocess.run([sys.executable, str(ROOT / "stages/split.py"), str(sf), "folds.csv", "d.csv", "d.png"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr == f"error: {csv}, line 2: img '/etc/hostname' is not a plain file name " \
                         "(the layout lists names like img_44733.jpg)\n"
    assert "Traceback" not in res.stderr and not (tmp_path / "folds.csv").exists()


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch /tmp/foldwise-pwned",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    from foldwise.models import load_checkpoint
    path = tmp_path / "model.pt"
    with open(path, "wb") as f:
        torch.save({"spec": RunsCode(), "state_dict": {}}, f, pickle_module=pickle)
    Path("/tmp/foldwise-pwned").unlink(missing_ok=True)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)
    assert not Path("/tmp/foldwise-pwned").exists()


def test_every_torch_load_in_the_project_is_weights_only():
    calls = []
    for path in list((ROOT / "src").rglob("*.py")) + list((ROOT / "stages").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "load" \
                    and getattr(node.func.value, "id", "") == "torch":
                safe = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True
                           for k in node.keywords)
                calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", safe))
    assert calls and all(safe for _, safe in calls), calls


def test_a_cache_without_its_meta_json_is_named_with_the_stage_that_writes_it(tmp_path):
    """Every stage after preprocess builds its task from the cache's meta.json (one reader,
    `data.cache.read_meta`); a missing one is a line naming the file, not a traceback."""
    from foldwise.data.cache import read_meta
    with pytest.raises(InputError, match=rf"{tmp_path / 'meta.json'}: not found; the preprocess stage"):
        read_meta(tmp_path)
    (tmp_path / "meta.json").write_text('{"task": "classification", "classes": ["a", "b"]}')
    assert read_meta(tmp_path)["classes"] == ["a", "b"]
