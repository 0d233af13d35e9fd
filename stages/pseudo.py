"""pseudo: one fold's further rounds with fold-honest pseudo-labels, after its round 1.

usage: python stages/pseudo.py FOLD FOLDS_CSV PROCESSED_DIR MODELS_DIR OUT_DIR
params: pseudo.* (rounds, mode, threshold, weight, epochs, validation, lr), and what round 1
        trained with (seed, lr, train.*, tta), mlflow
reads MODELS_DIR/fold_FOLD (round 1: kept weights and predictions); writes OUT_DIR in the same
format, holding the last round (read in its place by every later stage), or with pseudo.rounds
0 only OUT_DIR/rounds.json. A run of its own in MLflow ("fold K pseudo-labels"). Round 1 is a
stage of its own (train), so an experiment that changes only pseudo.* reuses it from DVC's
run-cache.
"""
import sys

from foldwise import params as P, stage
from foldwise.train.pseudo_stage import run


def main():
    fold, folds_csv, processed, models, out = stage.arguments(
        __doc__, ("fold", "which fold (0..k-1)"), ("folds_csv", "split's fold table"),
        ("processed_dir", "the preprocess cache"), ("models_dir", "holds round 1, fold_FOLD"),
        ("out_dir", "the fold's last round"))
    code = run(P.load(), int(fold), folds_csv, processed, models, out)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    stage.run(main)
