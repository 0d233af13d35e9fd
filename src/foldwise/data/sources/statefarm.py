"""State Farm Distracted Driver Detection, read and written exactly as the competition ships it.

    root/driver_imgs_list.csv        subject,classname,img   (p002,c0,img_44733.jpg)
    root/imgs/train/c0 ... c9/<img>  640x480 RGB JPEG
    root/imgs/test/<img>
    root/sample_submission.csv       img,c0,...,c9
"""
from __future__ import annotations

import os
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from foldwise.errors import InputError
from foldwise.files import atomic_dir, write_csv
from foldwise.data.sources import Dataset, inside, listed_inside, read_table

CLASSES = tuple(f"c{i}" for i in range(10))
COLUMNS = ("subject", "classname", "img")
WIDTH, HEIGHT = 640, 480


def read(root: str | Path) -> Dataset:
    """List and check every training and test image; raise InputError naming what is wrong."""
    root = Path(root)
    csv = root / "driver_imgs_list.csv"
    table = read_table(csv, COLUMNS, "State Farm")
    for i, row in enumerate(table.itertuples(index=False)):
        line = i + 2  # 1-based, after the header
        if row.classname not in CLASSES:
            raise InputError(f"{csv}, line {line}: unknown class {row.classname!r} (img {row.img!r}); "
                             f"expected one of c0..c9")
        if not row.subject:
            raise InputError(f"{csv}, line {line}: empty subject (img {row.img!r})")
        if not row.img or row.img in (".", "..") or Path(row.img).name != row.img:
            raise InputError(f"{csv}, line {line}: img {row.img!r} is not a plain file name "
                             "(the layout lists names like img_44733.jpg)")
        path = inside(root, f"imgs/train/{row.classname}/{row.img}", f"{csv}, line {line}")
        if not path.is_file():
            raise InputError(f"{csv}, line {line}: image {path} is listed but missing")
    dup = table["img"].duplicated(keep=False)
    if dup.any():
        lines = [int(i) + 2 for i in np.flatnonzero(dup.to_numpy())][:5]
        raise InputError(f"{csv}, lines {lines}: image name {table['img'][dup].iloc[0]!r} listed twice")

    test_dir = root / "imgs" / "test"
    test_files = sorted(p.name for p in listed_inside(root, test_dir.glob("*.jpg"))) \
        if test_dir.is_dir() else []
    if not test_files:
        raise InputError(f"{test_dir}: no test images (*.jpg) found")

    train = pd.DataFrame({
        "id": table["img"],
        "path": [str(root / "imgs" / "train" / c / i) for c, i in zip(table["classname"], table["img"])],
        "label": [CLASSES.index(c) for c in table["classname"]],
        "group": table["subject"],
    })
    test = pd.DataFrame({"id": test_files, "path": [str(test_dir / f) for f in test_files]})
    return Dataset(train=train, test=test, classes=CLASSES, task="classification", hflip_safe=False)


def write_submission(ids, probs: np.ndarray, meta: dict, path: str | Path) -> None:
    """`img,c0,...,c9`, one row per test image; each row a probability distribution."""
    probs = np.asarray(probs, dtype=np.float64)
    df = pd.DataFrame(probs, columns=list(meta["classes"]))
    df.insert(0, "img", list(ids))
    write_csv(df, path, float_format="%.6g")


# --- synthetic sample --------------------------------------------------------------------------
# A cabin seen from the passenger side: steering wheel, radio, a driver whose arm pose and held
# object give the class. Each driver has their own background, colours, lighting, camera offset
# and a personal offset of every pose, and the frames of one driver are near duplicates, as in
# the real video frames, so a split that mixes drivers flatters the score.

_WHEEL = (200, 370)
_SHOULDERS = ((280, 255), (400, 255))
_HEAD = (345, 165)
_REST_L, _REST_R = (140, 330), (255, 300)  # both hands on the wheel
# class -> (left hand, right hand, object, object at 'L'/'R', head shift)
_POSES = {
    "c0": (_REST_L, _REST_R, None, None, (0, 0)),
    "c1": (_REST_L, (380, 380), "phone", "R", (0, 15)),
    "c2": (_REST_L, (420, 175), "phone", "R", (0, 0)),
    "c3": ((300, 395), _REST_R, "phone", "L", (0, 15)),
    "c4": ((275, 170), _REST_R, "phone", "L", (0, 0)),
    "c5": (_REST_L, (560, 320), None, None, (25, 0)),
    "c6": (_REST_L, (365, 215), "cup", "R", (0, 0)),
    "c7": (_REST_L, (560, 95), None, None, (45, -10)),
    "c8": (_REST_L, (335, 90), None, None, (0, 0)),
    "c9": (_REST_L, _REST_R, None, None, (75, 5)),
}


def _driver_style(rng: np.random.Generator) -> dict:
    return {
        "bg": rng.integers(30, 220, size=3),
        "bg2": rng.integers(30, 220, size=3),
        "body": tuple(int(v) for v in rng.integers(20, 200, size=3)),
        "skin": tuple(int(v) for v in np.array([200, 150, 120]) * rng.uniform(0.55, 1.15)),
        "offset": rng.integers(-24, 25, size=2),
        "gain": rng.uniform(0.7, 1.25),
        "pose_offsets": {c: rng.integers(-12, 13, size=(3, 2)) for c in CLASSES},
        "head_r": int(rng.integers(45, 62)),
    }


def _background(style: dict) -> Image.Image:
    """The driver's cabin wall: a vertical gradient between two colours."""
    ys = np.linspace(0.0, 1.0, HEIGHT)[:, None, None]
    canvas = (style["bg"] * (1 - ys) + style["bg2"] * ys) * np.ones((1, WIDTH, 1))
    return Image.fromarray(canvas.astype(np.uint8))


def _render(style: dict, background: Image.Image, classname: str,
            rng: np.random.Generator) -> Image.Image:
    img = background.copy()
    draw = ImageDraw.Draw(img)
    shift = style["offset"] + rng.integers(-6, 7, size=2)

    def at(p, extra=(0, 0)):
        return (int(p[0] + shift[0] + extra[0]), int(p[1] + shift[1] + extra[1]))

    def circle(c, r, fill, width=0, outline=None):
        draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=fill, outline=outline, width=width)

    left, right, obj, obj_at, head_shift = _POSES[classname]
    po = style["pose_offsets"][classname]
    jitter = rng.integers(-8, 9, size=(3, 2))
    hand_l = at(left, po[0] + jitter[0]) if left not in (_REST_L,) else at(left, jitter[0] // 2)
    hand_r = at(right, po[1] + jitter[1]) if right not in (_REST_R,) else at(right, jitter[1] // 2)
    head = at(_HEAD, np.asarray(head_shift) + po[2] // 3 + jitter[2] // 2)

    draw.rectangle([at((520, 280))[0], at((520, 280))[1], at((610, 360))[0], at((610, 360))[1]],
                   fill=(70, 70, 80))  # radio
    body_top = at((300, 230))
    draw.rounded_rectangle([body_top[0], body_top[1], body_top[0] + 120, body_top[1] + 260],
                           radius=40, fill=style["body"])
    circle(head, style["head_r"], style["skin"])
    eye = (head[0] + (18 if head_shift[0] > 40 else -12), head[1] - 10)
    circle(eye, 6, (20, 20, 20))
    circle(at(_WHEEL), 95, None, width=16, outline=(35, 35, 35))
    for shoulder, hand in zip(_SHOULDERS, (hand_l, hand_r)):
        draw.line([at(shoulder), hand], fill=style["body"], width=34)
        circle(hand, 28, style["skin"])
    if obj:
        hx, hy = hand_l if obj_at == "L" else hand_r
        if obj == "phone":
            draw.rectangle([hx - 18, hy - 48, hx + 18, hy + 8], fill=(15, 15, 25))
            draw.rectangle([hx - 14, hy - 44, hx + 14, hy - 2], fill=(120, 180, 255))
        else:
            draw.rectangle([hx - 24, hy - 52, hx + 24, hy + 14], fill=(200, 40, 40))
    arr = np.asarray(img, dtype=np.float32) * style["gain"]
    arr += rng.standard_normal(arr.shape, dtype=np.float32) * 6.0  # sensor noise
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _write_driver(job) -> None:
    """One driver's frames: (folder of each, file name, class) in order, from the driver's own
    random stream, so that drivers can be written in parallel and the set is the same."""
    seed, frames = job
    rng = np.random.default_rng(seed)
    style = _driver_style(rng)
    background = _background(style)
    for folder, name, classname in frames:
        _render(style, background, classname, rng).save(folder / name, quality=88)


def sample_frames(*, drivers: int, per_class: int, test_drivers: int, test_per_class: int,
                  seed: int) -> list[list[tuple[bool, str, str, str]]]:
    """The synthetic set's frames, driver by driver: (is a test frame, driver id, class, file
    name) in the order `write_sample` renders them."""
    rng = np.random.default_rng(seed)
    n_train, n_test = drivers * per_class * len(CLASSES), test_drivers * test_per_class * len(CLASSES)
    numbers = iter(rng.permutation(100_000)[: n_train + n_test])  # img_<n>.jpg, as in the real set
    out = []
    for d in range(drivers + test_drivers):
        is_test = d >= drivers
        out.append([(is_test, f"p{d + 2:03d}", classname, f"img_{next(numbers)}.jpg")
                     for classname in CLASSES for _ in range(test_per_class if is_test else per_class)])
    return out


def sample_test_labels(**sizes) -> dict[str, str]:
    """The class of each test image of the synthetic set `write_sample(**sizes)` writes (no
    stage reads them: they score a sample's submission in benchmarks)."""
    return {name: classname for frames in sample_frames(**sizes)
            for is_test, _, classname, name in frames if is_test}


def write_sample(root: str | Path, *, drivers: int, per_class: int, test_drivers: int,
                 test_per_class: int, seed: int) -> None:
    """Write a deterministic synthetic set in the State Farm layout to `root` (replaced whole),
    the drivers in parallel on the machine's cores (the files do not depend on how many)."""
    plan = sample_frames(drivers=drivers, per_class=per_class, test_drivers=test_drivers,
                         test_per_class=test_per_class, seed=seed)
    streams = np.random.SeedSequence(seed).spawn(drivers + test_drivers)  # one per driver
    with atomic_dir(root) as tmp:
        rows, test_names, jobs = [], [], []
        for stream, frames in zip(streams, plan):
            placed = []
            for is_test, driver, classname, name in frames:
                folder = tmp / "imgs" / ("test" if is_test else f"train/{classname}")
                folder.mkdir(parents=True, exist_ok=True)
                placed.append((folder, name, classname))
                if is_test:
                    test_names.append(name)
                else:
                    rows.append((driver, classname, name))
            jobs.append((stream, placed))
        processes = min(os.cpu_count() or 1, len(jobs))
        if processes > 1:
            with Pool(processes) as pool:
                pool.map(_write_driver, jobs, chunksize=1)
        else:
            list(map(_write_driver, jobs))
        write_csv(pd.DataFrame(rows, columns=list(COLUMNS)), tmp / "driver_imgs_list.csv")
        uniform = np.full((len(test_names), len(CLASSES)), 0.1)
        write_submission(sorted(test_names), uniform, {"classes": CLASSES},
                         tmp / "sample_submission.csv")
