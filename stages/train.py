"""train: one fold's round 1. Trains on the other folds, keeps the epoch with the best validation
loss (further pseudo-label rounds: the pseudo stage).

usage: python stages/train.py FOLD FOLDS_CSV PROCESSED_DIR OUT_DIR HISTORY_CSV
params: seed, lr, train.* (model, weights, optimiser, schedule, epochs, augmentation, EMA,
        mixup, devices, ...), tta (test-time views of validation and test), mlflow (where the
        fold's run is logged)
writes OUT_DIR/{model.pt, oof.csv, test.csv, run.json, history.csv} and the per-epoch HISTORY_CSV;
logs the fold as a child run in MLflow. With train.devices N > 1 the fold trains on N devices
(DDP, N processes started by torchrun; foldwise.train.distributed), rank 0 logging and writing.
"""
import sys

from foldwise import params as P, stage
from foldwise.train import train


def main():
    code = train.run(P.load(), stage.paths(__doc__, train.Paths))
    if code:
        sys.exit(code)


if __name__ == "__main__":
    stage.run(main)
