"""Recipe quality on real data: Fashion-MNIST through foldwise's own `dvc exp run`.

  python benchmarks/fashion_mnist.py write DATA_DIR
  python benchmarks/fashion_mnist.py run DATA_DIR WORK_DIR [--variants default,ema,...]
                                     [--folds 5] [--epochs 4] [--fold K] [--set KEY=VALUE ...]
                                     [--out benchmarks/fashion-mnist.json]
  python benchmarks/fashion_mnist.py blend DATA_DIR WORK_DIR EXP EXP [--temperature]

`write` lays out Debian's `dataset-fashion-mnist` (60,000 train + 10,000 test 28x28 greyscale
images, MIT; `apt-get install dataset-fashion-mnist`) as foldwise's image-folders source:
DATA_DIR/train/<class>/<n>.png and DATA_DIR/test/<n>.png, with the test labels beside them in
DATA_DIR/test_labels.csv (which no stage reads).

`run` copies this project into WORK_DIR, points it at DATA_DIR (resnet10t at 28x28, grey), and
runs each variant as one `dvc exp run` with its `-S` overrides (split and preprocess are shared
through DVC's run-cache); `--set` adds overrides to every variant of the run, e.g. another model
or size (`--set train.model=test_resnet --set preprocess.height=56 --set preprocess.width=56`).
For each it reads the OOF figures from metrics.json, scores the exported submission against the
test labels (accuracy and log loss, scikit-learn), and times the whole experiment; with
`--set distill.model=NAME` it also scores the distilled network's submission and times
`foldwise-predict` on the test images with the bag and with the student (with `--set
refit.epochs=auto` or N, the same for the refit network); each fold's
own training time comes from its MLflow run, so a fold restored from the run-cache (trained
earlier by `run --fold K` with the same params) is still counted. Prints a table and writes it
as JSON, row by row as they finish.

`run --fold K` trains only fold K of the split (`dvc exp run train@K`: a fifth of the work at
5 folds) and scores that one model: its validation predictions (the fold's oof.csv, with the
fold's test-time views) and its test predictions, both with scikit-learn. The options that
act on single models (EMA, mixup, clipping, TTA, the architecture) compare there; the
calibration and the bag need every fold.

`blend DATA_DIR WORK_DIR EXP EXP ...` runs `foldwise-blend` on finished experiments of `run`
(their names are in its JSON) and scores the blended submission against the test labels.

`timm DATA_DIR WORK_DIR --fold K --timm-repo REPO` trains the same fold with timm's own
`train.py` (from a clone of pytorch-image-models; `fetch` brings one) at foldwise's settings:
resnet10t, 28x28 grey, batch 64, AdamW at the same lr and weight decay, cosine per step with the
same warm-up and floor, the same epochs; timm's own augmentation and label smoothing otherwise.
`--timm-args` adds train.py arguments (e.g. augmentation closer to foldwise's).
The fold's images are linked into train/ and validation/ folders from the project's
data/folds.csv, so both see exactly the same split. Reports timm's validation log loss (its
eval_loss, plain cross-entropy) and accuracy beside foldwise's for that fold.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image
from sklearn.metrics import log_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
import project  # noqa: E402  (benchmarks/project.py)

sys.path.insert(0, str(project.ROOT / "src"))
from foldwise.ensemble import calibration  # noqa: E402

IDX = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
           "boot")
VARIANTS = {  # name: `dvc exp run -S` overrides on top of the base params below
    "default": [],
    "ema": ["train.ema.decay=0.998"],
    "mixup": ["train.mixup.mixup_alpha=0.2", "train.mixup.cutmix_alpha=1.0", "train.mixup.prob=0.5"],
    "clip": ["train.clip_grad=1.0"],
    "tta": ["tta.hflip=true", "tta.shift=0.04"],
    "calibration": ["calibration.temperature=true"],
    "ema+tta": ["train.ema.decay=0.998", "tta.hflip=true", "tta.shift=0.04"],
}
VARIANTS["ema+tta+calibration"] = [*VARIANTS["ema+tta"], "calibration.temperature=true"]
# a second architecture with the same additions, for a blend of two (RegNetX-200MF: another
# family, about as fast here on 2 cores)
VARIANTS["regnetx_002+ema+tta+calibration"] = ["train.model=regnetx_002",
                                             *VARIANTS["ema+tta+calibration"]]
# fold-honest pseudo-labels (a second round of 3 epochs per fold, from its kept weights), and the
# second-level model over them
VARIANTS["pseudo"] = [*VARIANTS["ema+tta+calibration"], "pseudo.rounds=1", "pseudo.epochs=3"]
VARIANTS["pseudo+stack"] = [*VARIANTS["pseudo"], "stack.model=logistic"]
# further rounds fine-tuned from lr/4 without warm-up (params.yaml's default since 2026-12-04),
# or restarting round 1's schedule (the default before: `pseudo` meant this at code 59aa727)
VARIANTS["pseudo-finetune"] = [*VARIANTS["pseudo"], "pseudo.lr=0.0005"]
VARIANTS["pseudo-restart"] = [*VARIANTS["pseudo"], "pseudo.lr=0.0"]
VARIANTS["stack"] = [*VARIANTS["ema+tta+calibration"], "stack.model=logistic"]
# test-neighbour averaging and a stack over neighbour features, each measured out-of-fold (one
# fold's model, within its validation fold) and on the test labels (all folds, the whole test
# set): does the OOF effect predict the test effect?
VARIANTS["calibration+neighbours"] = [*VARIANTS["calibration"], "neighbours.k=5"]
VARIANTS["calibration+neighbours+stack"] = [*VARIANTS["calibration+neighbours"],
                                            "stack.model=logistic", "stack.neighbours=5"]
# the networks for small images (foldwise.smallnets) at native 28x28 against the small-image
# recipe before them (test_resnet upscaled to 56x56), each with EMA and the mirrored and shifted
# test-time views; random erasing and label smoothing on top, one at a time
VARIANTS["test_resnet56"] = ["train.model=test_resnet", "preprocess.height=56", "preprocess.width=56",
                             "train.ema.decay=0.998", "tta.hflip=true", "tta.shift=0.04"]
VARIANTS["small_resnet20"] = ["train.model=small_resnet20", "train.ema.decay=0.998", "tta.hflip=true",
                              "tta.shift=0.04"]
VARIANTS["small_resnet20+erase"] = [*VARIANTS["small_resnet20"], "train.augment.erase=0.25"]
VARIANTS["small_resnet20+smoothing"] = [*VARIANTS["small_resnet20"], "train.label_smoothing=0.1"]
VARIANTS["test_resnet56+erase"] = [*VARIANTS["test_resnet56"], "train.augment.erase=0.25"]
# the stem halving the image (every stage a quarter of the cost), deeper or wider where it pays
VARIANTS["small_resnet20-s2"] = [*VARIANTS["small_resnet20"], "+train.model_kwargs.stem_stride=2"]
VARIANTS["small_resnet56-s2"] = ["train.model=small_resnet56", *VARIANTS["small_resnet20-s2"][1:]]
VARIANTS["small_resnet20-s2-w2"] = [*VARIANTS["small_resnet20-s2"], "+train.model_kwargs.width=2"]
# the same time spent another way (--epochs 8): smaller images and more epochs (48x48 is 0.73x the
# pixels of 56x56: 11 epochs), or twice the batch at sqrt(2) the learning rate
VARIANTS["test_resnet48-11ep"] = ["train.model=test_resnet", "preprocess.height=48", "preprocess.width=48",
                                  *VARIANTS["test_resnet56"][3:], "train.epochs=11", "train.patience=11"]
VARIANTS["test_resnet56-b128"] = [*VARIANTS["test_resnet56"], "train.batch_size=128", "lr=0.0028"]
# one network instead of the bag: the refit network (every image, the folds' median kept epochs)
# and the distilled one beside it; with `--set refit.epochs=N` on test_resnet56, the refit network
# at the bag's training compute (N = (k-1) x the folds' epochs: the same images seen)
VARIANTS["test_resnet56+refit+distill"] = [*VARIANTS["test_resnet56"], "refit.epochs=auto",
                                           "distill.model=test_resnet"]
# at `--epochs 4` and 5 folds: (k-1) x 4 = 16 epochs over every image, the images the bag's folds saw
VARIANTS["test_resnet56+refit16"] = [*VARIANTS["test_resnet56"], "refit.epochs=16"]
# the refit network as the cheapest program: no test-time views (one pass per image)
VARIANTS["test_resnet56+refit-1pass"] = [*VARIANTS["test_resnet56"], "refit.epochs=auto", "refit.tta=false"]
# the smallimages preset's recipe (tasks/smallimages.yaml): test_resnet56 with crops that only zoom
# in and clipping (the base params above have batch 64 and one warm-up epoch, as the preset)
VARIANTS["smallimages"] = [*VARIANTS["test_resnet56"], "train.augment.crop_area=0.88",
                           "train.augment.shift=0", "train.augment.scale=0", "train.augment.rotate=0",
                           "train.clip_grad=1.0"]
# levers on the smallimages recipe, one at a time: a higher learning rate (the search's best
# trial: 0.003), label smoothing (with the OOF temperature, which takes back its log loss)
VARIANTS["smallimages+lr3"] = [*VARIANTS["smallimages"], "lr=0.003"]
VARIANTS["smallimages+smoothing"] = [*VARIANTS["smallimages"], "train.label_smoothing=0.1",
                                     "calibration.temperature=true"]
# more pixels for the deep stages (64x64: 1.31x the pixels of 56x56, so 6 epochs take 8's time)
VARIANTS["smallimages-64-6ep"] = [*VARIANTS["smallimages"], "preprocess.height=64", "preprocess.width=64",
                                  "train.epochs=6", "train.patience=6"]
VARIANTS["smallimages-64"] = [*VARIANTS["smallimages"], "preprocess.height=64", "preprocess.width=64"]
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's training pixels, 0..1


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (big-endian; magic 0x0000 type ndim, then the sizes, then the data)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write(out: Path, per_class: int = 0) -> None:
    """The image folders; `per_class` > 0: only the first that many training images of each
    class (the 10,000 test images always)."""
    if not IDX.is_dir():
        sys.exit(f"{IDX}: not found; apt-get install dataset-fashion-mnist")
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(IDX / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(IDX / f"{prefix}-labels-idx1-ubyte.gz")
        for c in CLASSES:
            if split == "train":
                (out / "train" / c).mkdir(parents=True, exist_ok=True)
        (out / "test").mkdir(parents=True, exist_ok=True)
        names, kept = [], np.zeros(len(CLASSES), dtype=int)
        for n, (img, label) in enumerate(zip(images, labels)):
            if split == "train" and per_class and kept[label] >= per_class:
                continue
            kept[label] += 1
            name = f"{n:05d}.png"
            folder = out / "train" / CLASSES[label] if split == "train" else out / "test"
            Image.fromarray(img).save(folder / name)
            names.append(name)
        if split == "test":
            pd.DataFrame({"image": names, "label": [CLASSES[i] for i in labels]}).to_csv(
                out / "test_labels.csv", index=False)
        else:
            trained = int(kept.sum())
    print(f"wrote {out}: {trained:,} train images in {len(CLASSES)} class folders, 10,000 test")


def base_params(data: Path, folds: int, epochs: int):
    def change(p):
        p["folds"] = list(range(folds))
        p["data"].update(source="folders", root=str(data))
        p["preprocess"].update(height=28, width=28, crop=[0.0, 0.0, 1.0, 1.0], mode="L")
        p["train"].update(model="resnet10t", epochs=epochs, batch_size=64, warmup_epochs=1,
                          patience=epochs, clip_grad=0.0)  # the `clip` variant turns it on
        p["train"]["augment"].update(hflip=True, shift=0.06, scale=0.06, rotate=5, crop_area=1.0,
                                     saturation=0.0)
    return change


def scores(probs: np.ndarray, y: np.ndarray, prefix: str) -> dict:
    """Accuracy and log loss (scikit-learn) of class probabilities, columns in the order y indexes."""
    probs = probs / probs.sum(axis=1, keepdims=True)  # written to 6-8 significant digits
    return {f"{prefix}_accuracy": float((probs.argmax(1) == y).mean()),
            f"{prefix}_logloss": float(log_loss(y, probs, labels=range(len(CLASSES))))}


def test_truth(data: Path, images) -> np.ndarray:
    """Sorted-class indices of the test images named `images` (test_labels.csv)."""
    truth = pd.read_csv(data / "test_labels.csv").set_index("image").loc[list(images), "label"]
    return np.array([sorted(CLASSES).index(c) for c in truth])


def test_scores(submission: Path, data: Path) -> dict:
    sub = pd.read_csv(submission)
    return scores(sub[sorted(CLASSES)].to_numpy(), test_truth(data, sub["image"]), "test")


def temperature_gap(project_dir: Path, data: Path, temperature: float) -> dict:
    """The temperature is fit on OOF rows, each predicted by one fold's model, but applied to the
    bag of all folds, whose averaged probabilities are already softer. Measured on the test
    labels: the bag's log loss untempered, with the OOF temperature (the submission), and with
    the temperature that would have been best for the bag (fit on the test labels themselves,
    an oracle no submission can have)."""
    bag = pd.read_csv(project_dir / "data" / "bagged" / "test.csv")
    probs, y = bag[sorted(CLASSES)].to_numpy(), test_truth(data, bag["id"])
    best = calibration.fit(probs / probs.sum(axis=1, keepdims=True), y)
    return {"temperature_oof": temperature, "test_logloss_untempered": scores(probs, y, "")["_logloss"],
            "temperature_best_for_bag": best,
            "test_logloss_best_temperature": scores(calibration.temper(probs, best), y, "")["_logloss"]}


def fold_scores(project_dir: Path, data: Path, fold: int) -> dict:
    """One fold's model: its validation predictions and its test predictions, scored."""
    out = project_dir / "models" / f"fold_{fold}"
    val, test = pd.read_csv(out / "oof.csv"), pd.read_csv(out / "test.csv")
    run = json.loads((out / "run.json").read_text())
    columns = [c for c in val.columns if c in CLASSES]  # the task's order, which label indexes
    return {**scores(val[columns].to_numpy(), val["label"].to_numpy(), "val"),
            **scores(test[sorted(CLASSES)].to_numpy(), test_truth(data, test["id"]), "test"),
            "best_epoch": run["best_epoch"], "kept_weights": run["kept_weights"],
            "train_images_per_s": run["train_images_per_s"],
            "fold_minutes": run_minutes(project_dir, out / "run.json")}


def run_minutes(project_dir: Path, run: Path) -> float:
    """A fold run's own wall time: its MLflow run's start to end (`run` its run.json)."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{project_dir / 'mlflow.db'}")
    info = client.get_run(json.loads(run.read_text())["run_id"]).info
    return (info.end_time - info.start_time) / 60000


def fold_minutes(project_dir: Path, folds: int, folder: str = "fold") -> list[float] | None:
    """Each fold run's own wall time (run_minutes). A fold that DVC restored from its run-cache
    (trained before, e.g. by `run --fold K` with the same params) still counts what its
    training took, so a bag's cost is its folds' sum plus the stages around them.
    `folder` "pseudo": the pseudo-label rounds' runs (the pseudo@k stages), None without any."""
    runs = [project_dir / "models" / f"{folder}_{k}" / "run.json" for k in range(folds)]
    if not all(run.is_file() for run in runs):
        return None
    return [run_minutes(project_dir, run) for run in runs]


def stack_scores(project_dir: Path) -> dict:
    """With `stack.model` set: the second-level model's cross-fitted OOF figures (the exported
    submission is then the stack's)."""
    stacked = json.loads((project_dir / "metrics" / "stack.json").read_text())
    if not stacked.get("model"):
        return {}
    return {"stack_oof_logloss": stacked["oof"]["logloss"], "stack_oof_accuracy": stacked["oof"]["accuracy"]}


def distilled_scores(project_dir: Path, data: Path) -> dict:
    """With `distill.model` set: the distilled network's submission scored on the test labels
    beside the bag's, its fidelity to the teacher, its in-sample training accuracy (not
    out-of-fold), its training minutes (its MLflow run), and `foldwise-predict` timed on the
    10,000 test images with the exported bag and with the student, one after the other."""
    figures = json.loads((project_dir / "metrics" / "distill.json").read_text())
    if not figures.get("model"):
        return {}
    minutes, test, seconds = one_network(project_dir, data, figures, "distilled")
    fidelity = figures.get("test_fidelity") or figures["test_fidelity_not_held_out"]
    return {"distilled_model": figures["model"], "distilled_teacher": figures["teacher"],
            "distilled_test_accuracy": test["test_accuracy"],
            "distilled_test_logloss": test["test_logloss"],
            "distilled_test_agreement": fidelity["agreement"],
            "distilled_test_held_out": "test_fidelity" in figures,  # false with distill.test
            "distilled_train_accuracy_not_oof": figures["train_not_out_of_fold"]["accuracy"],
            "distilled_minutes": minutes,
            "predict_seconds_bag": seconds["bag"], "predict_seconds_distilled": seconds["distilled"],
            **speed_figures(project_dir, "student")}


def one_network(project_dir: Path, data: Path, figures: dict, name: str) -> tuple:
    """A one-network export's (`export/NAME`) training minutes (its MLflow run), its
    submission's test scores, and `foldwise-predict`'s seconds with the bag and with it."""
    from mlflow.tracking import MlflowClient
    info = MlflowClient(tracking_uri=f"sqlite:///{project_dir / 'mlflow.db'}").get_run(
        figures["mlflow_run_id"]).info
    test = test_scores(project_dir / "export" / name / "submission.csv", data)
    seconds = predict_seconds(project_dir, data, {"bag": "export/model", name: f"export/{name}/model"})
    return (info.end_time - info.start_time) / 60000, test, seconds


def predict_seconds(project_dir: Path, data: Path, models: dict) -> dict:
    """`foldwise-predict` on the 10,000 test images with each exported model, one after the
    other: its wall time in seconds (the command's start included)."""
    seconds = {}
    for name, model in models.items():
        t0 = time.perf_counter()
        project.run(f"foldwise-predict {model} {data.resolve() / 'test'} /tmp/fm-predict-{name}.csv", project_dir)
        seconds[name] = time.perf_counter() - t0
    return seconds


def refit_scores(project_dir: Path, data: Path) -> dict:
    """With `refit.epochs` set: the refit network's submission scored on the test labels beside
    the bag's, its agreement with the bag, its in-sample training accuracy (not out-of-fold),
    its epochs and training minutes (its MLflow run), and `foldwise-predict` timed on the
    test images with the exported bag and with the refit network."""
    figures = json.loads((project_dir / "metrics" / "refit.json").read_text())
    if not figures.get("epochs"):
        return {}
    minutes, test, seconds = one_network(project_dir, data, figures, "refit")
    return {"refit_epochs": figures["epochs"], "refit_epochs_from": figures["epochs_from"],
            "refit_test_accuracy": test["test_accuracy"], "refit_test_logloss": test["test_logloss"],
            "refit_agreement_with_bag": figures["vs_bag_on_test"].get("agreement"),
            "refit_train_accuracy_not_oof": figures["train_not_out_of_fold"]["accuracy"],
            "refit_minutes": minutes,
            "predict_seconds_bag_beside_refit": seconds["bag"], "predict_seconds_refit": seconds["refit"],
            **speed_figures(project_dir, "refit")}


def speed_figures(project_dir: Path, name: str) -> dict:
    """The speed stage's images/s of the exported program `name` ("student", "refit") and of
    the bag's, timed one after the other on the same 1,024 decoded test images."""
    speed = json.loads((project_dir / "metrics" / "speed.json").read_text())
    return {f"{name}_program_images_per_s": speed[f"{name}_images_per_s"],
            f"bag_program_images_per_s_beside_{name}": speed["bag_images_per_s"]}


def run(data: Path, work: Path, names: list[str], folds: int, epochs: int, out: Path,
        fold: int | None = None, common: list[str] = ()) -> None:
    dst = work / "project"
    dst.mkdir(parents=True, exist_ok=True)
    project.copy(dst, base_params(data.resolve(), folds, epochs))  # this checkout's code, again
    rows = []
    for name in names:
        overrides = [*common, *VARIANTS[name]]
        sets = " ".join(f"-S {s}" for s in overrides)
        project.run("git checkout -- params.yaml", dst)  # an exp run leaves its -S values behind
        t0 = time.perf_counter()
        target = "" if fold is None else f"train@{fold}"
        experiment = f"{name}-{int(time.time())}"
        project.run(f"dvc exp run -n {experiment} {sets} {target}", dst)
        seconds = time.perf_counter() - t0
        params = yaml.safe_load((dst / "params.yaml").read_text())  # with this run's -S values
        setting = {"model": params["train"]["model"], "size": params["preprocess"]["height"],
                   "epochs": params["train"]["epochs"], "folds": len(params["folds"]),
                   "sets": overrides}
        if fold is None:
            oof = json.loads((dst / "metrics" / "metrics.json").read_text())["oof"]
            row = {"variant": name, "oof_logloss": oof["logloss"], "oof_accuracy": oof["accuracy"],
                   "oof_logloss_calibrated": oof.get("logloss_calibrated"), **test_scores(dst / "export" / "submission.csv", data),
                   **temperature_gap(dst, data, oof.get("temperature", 1.0)),
                   "fold_minutes": fold_minutes(dst, len(params["folds"])),
                   "pseudo_minutes": fold_minutes(dst, len(params["folds"]), "pseudo"),
                   **stack_scores(dst), **distilled_scores(dst, data), **refit_scores(dst, data)}
        else:
            row = {"variant": name, **fold_scores(dst, data, fold)}
        row.update(setting)
        row["experiment"], row["minutes"] = experiment, seconds / 60
        rows.append(row)
        print(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                       if v is not None), flush=True)
        out.write_text(json.dumps({"only_fold": fold, "rows": rows}, indent=2) + "\n")  # so far
    table = pd.DataFrame(rows).drop(columns=["sets"])
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def blend(data: Path, work: Path, experiments: list[str], mean: str, out: Path,
          temperature: bool = False) -> None:
    dst = work / "project"
    flags = f"--mean {mean} --no-mlflow" + (" --temperature" if temperature else "")
    t0 = time.perf_counter()
    res = project.run(f"foldwise-blend {' '.join(experiments)} {flags}", dst)
    seconds = time.perf_counter() - t0
    print(res.stdout)
    summary = json.loads((dst / "export" / "blend" / "blend.json").read_text())
    row = {"experiments": experiments, "mean": mean, "temperature": temperature,
           "blend_seconds": seconds, "summary": summary,
           **test_scores(dst / "export" / "blend" / "submission.csv", data)}
    print(f"blend test accuracy {row['test_accuracy']:.4f} log loss {row['test_logloss']:.4f}")
    out.write_text(json.dumps(row, indent=2) + "\n")


def timm_layout(data: Path, dst: Path, work: Path, fold: int) -> tuple[Path, int]:
    """The fold's images linked into train/ and validation/ folders from the project's
    data/folds.csv (timm's ImageFolder layout); the number of training images."""
    folds = pd.read_csv(dst / "data" / "folds.csv", dtype={"id": str})
    layout = work / f"timm-fold{fold}"
    for row in folds.itertuples():
        split = "validation" if row.fold == fold else "train"
        link = layout / split / row.id
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink((data / "train" / row.id).resolve(), link)
    return layout, int((folds["fold"] != fold).sum())


def timm_command(params: dict, script: Path, layout: Path, out: Path, experiment: str,
                 epochs: int, model: str, size: int) -> list[str]:
    """train.py's arguments at foldwise's settings (the module's docstring); the checkpoint kept
    by validation loss, as foldwise keeps its epoch."""
    t, lr = params["train"], params["lr"]
    return [sys.executable, str(script), "--data-dir", str(layout), "--device", "cpu",
            "--no-prefetcher", "--model", model, "--num-classes", str(len(CLASSES)),
            "--in-chans", "1", "--input-size", "1", str(size), str(size), "--crop-pct", "1.0",
            "--mean", str(MEAN), "--std", str(STD), "--batch-size", str(t["batch_size"]),
            "--validation-batch-size", "256", "--epochs", str(epochs),
            "--warmup-epochs", str(t["warmup_epochs"]), "--opt", t["optimizer"], "--lr", str(lr),
            "--weight-decay", str(t["weight_decay"]), "--sched", t["scheduler"], "--sched-on-updates",
            "--warmup-lr", str(lr * t["warmup_lr"]), "--min-lr", str(lr * t["min_lr"]),
            "--seed", str(params["seed"]), "-j", "2", "--log-interval", "200", "--eval-metric", "loss",
            "--output", str(out), "--experiment", experiment]


def timm_test_scores(run_dir: Path, data: Path, model_name: str, size: int) -> dict:
    """timm's kept checkpoint (model_best.pth.tar; its EMA weights when train.py kept them)
    on the 10,000 test images through timm's own evaluation transform, scored with
    scikit-learn: one view, and the mean with the mirrored view."""
    import timm
    import torch
    from timm.data import create_transform, resolve_data_config
    state = torch.load(run_dir / "model_best.pth.tar", map_location="cpu", weights_only=False)
    model = timm.create_model(model_name, num_classes=len(CLASSES), in_chans=1)
    model.load_state_dict(state.get("state_dict_ema") or state["state_dict"])
    model.eval()
    config = resolve_data_config({"input_size": (1, size, size), "crop_pct": 1.0, "mean": (MEAN,),
                                  "std": (STD,)}, model=model)
    transform = create_transform(**config)
    names = sorted(p.name for p in (data / "test").glob("*.png"))
    plain, mirrored = [], []
    with torch.inference_mode():
        for i in range(0, len(names), 500):
            x = torch.stack([transform(Image.open(data / "test" / n).convert("L")) for n in names[i:i + 500]])
            plain.append(model(x).softmax(1))
            mirrored.append(model(x.flip(3)).softmax(1))
    probs, flipped = torch.cat(plain).numpy(), torch.cat(mirrored).numpy()
    y = test_truth(data, names)  # timm's ImageFolder classes are sorted, as foldwise's columns
    return {"timm_weights": "ema" if state.get("state_dict_ema") else "plain",
            "timm_kept_epoch": state["epoch"], **scores(probs, y, "timm_test"),
            **scores((probs + flipped) / 2, y, "timm_test_mirror")}


def timm_side_by_side(data: Path, work: Path, fold: int, epochs: int, repo: Path, out: Path,
                      extra: str = "", model: str | None = None, size: int = 28) -> None:
    """timm's train.py on the same fold at foldwise's settings (see the module's docstring)."""
    dst = work / "project"
    params = yaml.safe_load(project.run("git show HEAD:params.yaml", dst).stdout)  # the base
    model = model or params["train"]["model"]
    layout, trained = timm_layout(data, dst, work, fold)
    script = work / "timm_train.py"  # the clone's train.py, run beside the installed timm
    script.write_text(project.run("git show HEAD:train.py", repo).stdout)
    experiment = f"fold{fold}-{int(time.time())}"
    cmd = [*timm_command(params, script, layout, work / "timm-out", experiment, epochs, model, size),
           *extra.split()]
    t0 = time.perf_counter()
    res = project.run(" ".join(cmd), work)
    seconds = time.perf_counter() - t0
    run_dir = work / "timm-out" / experiment
    with open(run_dir / "summary.csv") as f:
        epochs_rows = list(csv.DictReader(f))
    best = min(epochs_rows, key=lambda r: float(r["eval_loss"]))
    last = epochs_rows[-1]
    row = {"fold": fold, "epochs": epochs, "model": model, "size": size,
           "timm_command": " ".join(cmd[1:]),
           "timm_val_logloss_best": float(best["eval_loss"]),
           "timm_val_accuracy_best": float(best["eval_top1"]) / 100, "timm_best_epoch": best["epoch"],
           "timm_val_logloss_last": float(last["eval_loss"]),
           "timm_val_accuracy_last": float(last["eval_top1"]) / 100, "timm_minutes": seconds / 60,
           "timm_train_images_per_s": epochs * trained / seconds,
           **timm_test_scores(run_dir, data, model, size)}
    print(res.stdout[-2000:])
    print(json.dumps(row, indent=2))
    out.write_text(json.dumps(row, indent=2) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="image folders from the Debian package's IDX files")
    w.add_argument("data_dir", type=Path)
    w.add_argument("--per-class", type=int, default=0,
                   help="only the first N training images of each class (default: all 60,000)")
    r = sub.add_parser("run", help="train and score each variant with dvc exp run")
    r.add_argument("data_dir", type=Path)
    r.add_argument("work_dir", type=Path)
    r.add_argument("--variants", default="default", help=f"comma-separated: {', '.join(VARIANTS)}")
    r.add_argument("--folds", type=int, default=5)
    r.add_argument("--epochs", type=int, default=4)
    r.add_argument("--fold", type=int, default=None,
                   help="train and score only this fold's model (default: the whole pipeline)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a -S override for every variant of this run (after the base, before the "
                        "variant's own), e.g. --set train.model=test_resnet --set preprocess.height=56")
    r.add_argument("--out", type=Path, default=Path(__file__).parent / "fashion-mnist.json")
    b = sub.add_parser("blend", help="foldwise-blend finished experiments, scored on the test labels")
    b.add_argument("data_dir", type=Path)
    b.add_argument("work_dir", type=Path)
    b.add_argument("experiments", nargs="+")
    b.add_argument("--mean", default="arithmetic")
    b.add_argument("--temperature", action="store_true",
                   help="foldwise-blend --temperature: a temperature fit with the weights")
    b.add_argument("--out", type=Path, default=Path(__file__).parent / "fashion-mnist-blend.json")
    t = sub.add_parser("timm", help="timm's train.py on one fold at the same settings")
    t.add_argument("data_dir", type=Path)
    t.add_argument("work_dir", type=Path)
    t.add_argument("--fold", type=int, default=0)
    t.add_argument("--epochs", type=int, default=4)
    t.add_argument("--timm-repo", type=Path, required=True,
                   help="a git clone of pytorch-image-models (its train.py at HEAD is run)")
    t.add_argument("--model", default=None, help="the network (default: the project's train.model)")
    t.add_argument("--size", type=int, default=28, help="the images' side in pixels (upscaled from 28)")
    t.add_argument("--timm-args", default="",
                   help="more train.py arguments, last so they win, e.g. \"--smoothing 0 --scale 0.9 1\"")
    t.add_argument("--out", type=Path, default=Path(__file__).parent / "fashion-mnist-timm.json")
    args = parser.parse_args(argv)
    if args.command == "write":
        write(args.data_dir, args.per_class)
    elif args.command == "blend":
        blend(args.data_dir, args.work_dir, args.experiments, args.mean, args.out, args.temperature)
    elif args.command == "timm":
        timm_side_by_side(args.data_dir, args.work_dir, args.fold, args.epochs, args.timm_repo,
                          args.out, args.timm_args, args.model, args.size)
    else:
        run(args.data_dir, args.work_dir, args.variants.split(","), args.folds, args.epochs, args.out,
            args.fold, args.set)


if __name__ == "__main__":
    main()
