"""Out-of-fold evaluation: the summary, per-fold figures, and the worst-predicted images."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from foldwise.files import atomic_path


class Evaluation(NamedTuple):
    summary: dict  # the OOF figures of every row together (task.report)
    per_fold: dict  # {fold: its rows' figures and image count}
    breakdown: pd.DataFrame  # the task's per-class (or per-target) table


def evaluate(task, oof: pd.DataFrame, truth: np.ndarray) -> Evaluation:
    """The OOF table scored against `truth` (aligned with its rows)."""
    preds = oof[task.columns].to_numpy()
    summary, breakdown = task.report(truth, preds, oof["fold"].to_numpy())
    per_fold = {}
    for k, rows in oof.groupby("fold").indices.items():
        per_fold[str(k)] = {**task.score(truth[rows], preds[rows]), "images": int(len(rows))}
    return Evaluation(summary, per_fold, breakdown)


def confusion(task, oof: pd.DataFrame, truth: np.ndarray) -> pd.DataFrame:
    """Actual and predicted label of each image (DVC's confusion template); empty where the
    task has no single label."""
    return task.confusion(truth, oof[task.columns].to_numpy())


def hardest(task, oof: pd.DataFrame, truth: np.ndarray, n: int) -> pd.DataFrame:
    """The `n` training images with the largest out-of-fold loss, worst first: in practice a
    list of mislabelled or ambiguous images."""
    preds = oof[task.columns].to_numpy()
    loss = task.item_loss(truth, preds)
    order = np.argsort(-loss, kind="stable")[:n]
    table = pd.DataFrame({"row": order, "id": oof["id"].to_numpy()[order],
                          "fold": oof["fold"].to_numpy()[order], "loss": loss[order]})
    for name, values in task.item_columns(truth[order], preds[order]).items():
        table[name] = values
    return table


def reliability(task, oof: pd.DataFrame, truth: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """The OOF reliability table (DVC plots it against the diagonal); empty for tasks whose
    outputs are no probabilities."""
    return task.reliability(truth, oof[task.columns].to_numpy(), bins)


def curves(histories: dict) -> pd.DataFrame:
    """Every fold's per-epoch history in one long table (epoch, fold, ...), for one chart."""
    return pd.concat([h.assign(fold=k)[["epoch", "fold", "val_metric", "train_loss", "lr"]]
                      for k, h in histories.items()], ignore_index=True)


def contact_sheet(images: np.ndarray, table: pd.DataFrame, path, columns: int = 6, cell: int = 160) -> None:
    """A PNG grid of the images listed in `table` (rows of `images`), each scaled to fill its
    `cell` (small images are enlarged, by whole pixels when they fit twice or more) and
    captioned with its id, loss, and for classes the true and the predicted class."""
    rows = max(1, -(-len(table) // columns))
    sheet = Image.new("RGB", (columns * cell, rows * (cell + 28)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, item in enumerate(table.itertuples(index=False)):
        pixels = np.asarray(images[item.row])
        im = Image.fromarray(pixels.squeeze()).convert("RGB")
        scale = min(cell / im.width, cell / im.height)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                       Image.NEAREST if scale >= 2 else Image.BILINEAR)
        x, y = (i % columns) * cell, (i // columns) * (cell + 28)
        sheet.paste(im, (x, y))
        caption = f"{item.id} loss {item.loss:.2f}"
        if hasattr(item, "label"):
            caption += f"\n{item.label} -> {item.predicted}"
        draw.text((x + 2, y + im.height + 1), caption, fill="black")
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
