"""What several test modules share: the toy training data and the training settings they
start from (conftest.py holds the fixtures and the project helpers)."""
from pathlib import Path

import numpy as np

from foldwise import params as P

ROOT = Path(__file__).resolve().parents[1]

CFG = P.evolve(P.load(ROOT / "params.yaml").train, {"epochs": 4, "batch_size": 8, "optimizer": "adamw", "momentum": 0.9, "weight_decay": 0.0,
       "scheduler": "cosine", "warmup_epochs": 0, "warmup_lr": 0.1, "min_lr": 0.01,
       "decay_epochs": 2, "decay_rate": 0.1, "label_smoothing": 0.0, "patience": 10,
       "channels_last": True, "amp": True, "compile": False, "lr_per_step": False,
       "clip_grad": 0.0, "clip_mode": "norm", "ema": {"decay": 0.0, "warmup": True},
       "mixup": {"mixup_alpha": 0.0, "cutmix_alpha": 0.0, "prob": 1.0, "switch_prob": 0.5},
       "augment": {"hflip": False, "shift": 0.05, "scale": 0.05, "rotate": 3,
                   "brightness": 0.1, "contrast": 0.1, "saturation": 0.0, "crop_area": 1.0,
                   "erase": 0.0, "erase_mode": "pixel"}})
NO_AUGMENT = P.build(P.Augment, {"hflip": False, "shift": 0, "scale": 0, "rotate": 0, "brightness": 0,
                                 "contrast": 0, "saturation": 0, "crop_area": 1.0,
                                 "erase": 0.0, "erase_mode": "pixel"})


def toy_data(n=48, seed=0):
    """Class 0: bright left half; class 1: bright right half."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    x = rng.integers(0, 60, size=(n, 16, 16, 3)).astype(np.uint8)
    for i, label in enumerate(y):
        x[i, :, (0 if label == 0 else 8):(8 if label == 0 else 16)] += 150
    return x, y


def copy_params(dst: Path) -> Path:
    """This project's params.yaml and the sample.yaml that `params.load` reads beside it, into
    the folder `dst`; returns the copy of params.yaml."""
    for name in ("params.yaml", P.SAMPLE_FILE):
        (dst / name).write_bytes((ROOT / name).read_bytes())
    return dst / "params.yaml"
