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
from foldwise.train import pseudo


def main():
    code = pseudo.run(P.load(), stage.paths(__doc__, pseudo.Paths))
    if code:
        sys.exit(code)


if __name__ == "__main__":
    stage.run(main)
