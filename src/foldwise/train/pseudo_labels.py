"""Fold-honest pseudo-labels: the unlabelled test images, labelled by models, as training data
for a second round of folds, without flattering the out-of-fold score.

The rule: the pseudo-labels that fold k's second-round model trains on are made only by models
that never saw the labels of fold k's validation images. Among one bag's folds that is fold k's
own first-round model alone, since every other fold's model trained on fold k's images. The
bag's test predictions (all folds averaged) would leak: through them fold k's second-round model
learns what the other folds' models learnt from fold k's labels, and its validation score on
those images flatters (Google QUEST's 1st place: the honest gain was smaller than the leaked one;
their fix was one pseudo-label set per fold). `leaked` checks any source against a fold by the
images themselves, so a model from another split (another seed, another experiment) is judged
by what it trained on, not by its fold number; `first_round`, where every fold's further rounds
take their first labeller, refuses one that leaks.

`further_rounds` (the pseudo stage, after the train stage's round 1) trains `pseudo.rounds`
more rounds: each starts from the previous round's kept weights and adds the test images, labelled by that fold's own previous
round (so by nothing that saw the fold's validation labels), to the fold's training rows, their
loss weighted by `pseudo.weight` (`PseudoLabelled`); validation is the fold's own labelled rows,
as in round 1, so the OOF table stays an honest estimate. The fold's folder holds the last round.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from foldwise.errors import InputError
from foldwise.tasks import of_classes
from foldwise.params import Pseudo, evolve
from foldwise.train import checkpoints, outputs
from foldwise.train.progress import REPLAYED
from foldwise.train.loader import Joined, Rows
from foldwise.train.loop import Around, FitData, FoldResult, Settings, train_fold

MODES = ("soft", "hard")


def leaked(val_ids, source_folds: pd.DataFrame, source_fold: int) -> list[str]:
    """The images of `val_ids` (one fold's validation images) whose labels the model that
    validated on `source_fold` of the split `source_folds` (columns id, fold) trained on."""
    trained = set(source_folds.loc[source_folds["fold"] != source_fold, "id"].astype(str))
    return sorted(set(map(str, val_ids)) & trained)


def check_sources(fold: int, folds: pd.DataFrame, sources: list[tuple[pd.DataFrame, int]],
                  names: list[str]) -> None:
    """Refuse pseudo-labels for `fold` (of the split `folds`) made by any source model (its
    split and its fold) that trained on one of the fold's validation images, naming it."""
    val_ids = folds.loc[folds["fold"] == fold, "id"]
    for (split, source_fold), name in zip(sources, names):
        seen = leaked(val_ids, split, source_fold)
        if seen:
            raise InputError(f"pseudo-labels for fold {fold}: {name} trained on {len(seen)} of the "
                             f"fold's {len(val_ids)} validation images (e.g. {seen[0]!r}); only "
                             "models that never saw them may label its extra images")


def targets(probs: np.ndarray, mode: str, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(rows kept, their targets): `soft` keeps every row with its probabilities; `hard` keeps
    the rows whose top class has at least `threshold`, as one-hot rows."""
    probs = np.asarray(probs, dtype=np.float64)
    if mode == "soft":
        return np.arange(len(probs)), probs
    if mode != "hard":
        raise InputError(f"params.yaml: pseudo.mode={mode!r} must be one of {', '.join(MODES)}")
    if not 0.0 < threshold <= 1.0:
        raise InputError(f"params.yaml: pseudo.threshold={threshold!r} must be in (0, 1]")
    rows = np.flatnonzero(probs.max(axis=1) >= threshold)
    return rows, np.eye(probs.shape[1])[probs[rows].argmax(axis=1)]


def check(cfg: Pseudo, task) -> None:
    """params.yaml's `pseudo` section, refused before any training where it cannot work (its
    ranges are the params schema's, checked when params.yaml is read)."""
    if not cfg.rounds:
        return
    if not of_classes(task):
        raise InputError("params.yaml: pseudo.rounds: pseudo-labels need a class task (its "
                         "outputs class probabilities); this task's are not")
    if not cfg.weight > 0:
        raise InputError(f"params.yaml: pseudo.weight={cfg.weight!r} must be > 0")
    targets(np.full((1, 2), 0.5), cfg.mode, cfg.threshold)  # mode and threshold checked


class PseudoLabelled:
    """A class task for a round with pseudo-labels: each training target is a row of class
    probabilities (one-hot for a labelled image, the pseudo-label for a test image) followed by
    the row's weight in the loss (1, or `pseudo.weight`). Validation takes the fold's labels as
    the task does. Mixup is off (timm's Mixup blends class indices)."""
    mixes = False
    erases = True  # an erased rectangle leaves a class (or a pseudo-label) as it is
    view_outputs: dict = {}

    def __init__(self, task):
        self.task = task
        self.monitor, self.probabilities, self.fp32_head = task.monitor, True, task.fp32_head
        self.classes, self.columns, self.num_outputs = task.classes, task.columns, task.num_outputs

    def targets(self, rows: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(rows, dtype=np.float32))

    def augment_targets(self, targets: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return targets  # a class survives a shift or a zoom

    def values(self, targets: torch.Tensor) -> np.ndarray:
        return targets[:, :-1].argmax(dim=1).cpu().numpy()  # training figures against top classes

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = targets[:, -1]
        each = F.cross_entropy(outputs, targets[:, :-1], reduction="none",
                               label_smoothing=getattr(self.task, "label_smoothing", 0.0))
        return (weight * each).sum() / weight.sum().clamp_min(1e-12)

    def activate(self, outputs: torch.Tensor) -> torch.Tensor:
        return self.task.activate(outputs)

    def score(self, targets: np.ndarray, preds: np.ndarray) -> dict:
        return self.task.score(targets, preds)

    def head(self):
        return self.task.head()


def round_targets(labels: np.ndarray, num_classes: int, pseudo_rows: np.ndarray,
                  weight: float) -> np.ndarray:
    """A round's training targets: the labelled images' one-hot rows with weight 1, then the
    pseudo-labelled images' rows with `weight`."""
    labelled = np.hstack([np.eye(num_classes)[np.asarray(labels, dtype=int)], np.ones((len(labels), 1))])
    extra = np.hstack([pseudo_rows, np.full((len(pseudo_rows), 1), float(weight))])
    return np.vstack([labelled, extra])


def further_round(data: FitData, num_classes: int, cfg: Pseudo,
                  previous: FoldResult) -> tuple[FitData, int]:
    """A further round's rows and how many are pseudo-labelled: the fold's labelled rows, then
    the test images labelled by the fold's own previous round and, with `pseudo.validation`,
    its validation images labelled the same way (their labels never enter training; they
    still score it). Each image set is joined as a view, nothing copied."""
    sources = [(data.x_test, previous.test_preds)]
    if cfg.validation:
        sources.append((data.x_val, previous.val_preds))
    parts, labels = [data.x_train], []
    for images, preds in sources:
        rows, y = targets(preds, cfg.mode, cfg.threshold)  # this fold's own model's
        parts.append(Rows(images.array, images.index[rows]) if isinstance(images, Rows)
                     else Rows(images, rows))
        labels.append(y)
    y = np.concatenate(labels)
    return FitData(Joined(*parts), round_targets(data.y_train, num_classes, y, cfg.weight),
                   data.x_val, data.y_val, data.x_test), len(y)


def round_resume(resume: str | Path | None, r: int) -> Path | None:
    """Round `r`'s resume file: `resume` itself for round 1, the others beside it."""
    if resume is None or r == 1:
        return None if resume is None else Path(resume)
    return Path(resume).with_name(f"{Path(resume).stem}-round{r}.pt")


def further_settings(run: Settings, cfg: Pseudo) -> Settings:
    """How further rounds train: `pseudo.epochs` (0: `train.epochs`); with `pseudo.lr` 0 their
    schedule restarts as round 1's did (lr, warm-up), else it fine-tunes the kept weights: it
    starts at `pseudo.lr`, without warm-up, and decays as round 1's did."""
    changes = {"epochs": cfg.epochs or run.cfg.epochs}
    if cfg.lr:
        changes["warmup_epochs"] = 0
    return dataclasses.replace(run, lr=cfg.lr or run.lr, cfg=evolve(run.cfg, changes))


@dataclasses.dataclass(frozen=True)
class Rounds:
    """The further rounds to train: params.yaml's `pseudo` section, round 1's result (`first`)
    and, with `replay`, round 1's rows given to `on_epoch` first (a run of its own that shows
    the whole curve)."""
    cfg: Pseudo
    first: FoldResult
    replay: bool = False


def further_rounds(net, task, run: Settings, data: FitData, rounds: Rounds,
                   around: Around = Around()) -> FoldResult:
    """`rounds.cfg.rounds` rounds with pseudo-labels after round 1 (`rounds.first`, whose kept
    weights `net` holds; see the module's text). The result is the last round's, with every
    round's history (epochs numbered on, columns `round` and `pseudo_images`) and its kept
    epoch counted across them."""
    cfg, first, on_epoch = rounds.cfg, rounds.first, around.on_epoch
    histories = [first.history.assign(round=1, pseudo_images=0)]
    for row in histories[0].to_dict("records") if rounds.replay else []:
        on_epoch({**row, REPLAYED: 1.0})
    round_run, result = further_settings(run, cfg), first
    for r in range(2, cfg.rounds + 2):
        round_data, n_pseudo = further_round(data, task.num_outputs, cfg, result)
        offset, extra = sum(len(h) for h in histories), {"round": r, "pseudo_images": n_pseudo}
        result = train_fold(net, PseudoLabelled(task), round_run, round_data, dataclasses.replace(
            around, on_epoch=lambda row: on_epoch({**row, **extra, "epoch": row["epoch"] + offset}),
            resume=round_resume(around.resume, r)))
        histories.append(result.history.assign(epoch=result.history["epoch"] + offset, **extra))
    return dataclasses.replace(result, history=pd.concat(histories, ignore_index=True),
                               best_epoch=offset + result.best_epoch)


def first_round(models, fold: int, task, ids, val_ids, test_ids) -> FoldResult:
    """Round 1 as the train stage left it in `models/fold_K/`: kept weights, history and
    predictions. The labeller of every further round starts here, so the rule is checked
    here (`check_sources`): the folder's model, which trained on every training image (`ids`)
    but those it validated on, must never have trained on one of this fold's validation
    images (`val_ids`); then its rows are checked against them and the test images."""
    run = outputs.read_run(models, fold, where=outputs.fold_dir)
    oof = outputs.read_oof(models, fold, where=outputs.fold_dir)
    test = outputs.read_test(models, fold, where=outputs.fold_dir)
    ids = pd.Series(list(map(str, ids)))
    ours = pd.DataFrame({"id": ids, "fold": np.where(ids.isin(set(map(str, val_ids))), fold, -1)})
    source = pd.DataFrame({"id": ids, "fold": np.where(ids.isin(set(oof["id"])), fold, -1)})
    check_sources(fold, ours, [(source, fold)], [f"the model in {outputs.fold_dir(models, fold)}"])
    for table, ids, name in ((oof, val_ids, "oof.csv"), (test, test_ids, "test.csv")):
        if list(table["id"]) != list(map(str, ids)):
            raise InputError(f"{outputs.fold_dir(models, fold) / name}: not the rows of fold "
                             f"{fold} in this split and cache: rerun its train stage")
    ckpt = checkpoints.load(outputs.checkpoint_path(models, fold, where=outputs.fold_dir))
    return FoldResult(ckpt["state_dict"], outputs.read_history(models, fold, where=outputs.fold_dir),
                      int(run["best_epoch"]), run.get("kept_weights", "raw"),
                      oof[list(task.columns)].to_numpy(), test[list(task.columns)].to_numpy(),
                      float(run.get("train_images_per_s", 0.0)))
