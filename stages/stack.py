"""stack: a second-level model over the bag's out-of-fold predictions (and, with
stack.neighbours, their nearest neighbours' predictions and similarities), its OOF score
cross-fitted over the same folds, the model kept for export to apply to the test predictions.

usage: python stages/stack.py MODELS_DIR PROCESSED_DIR BAGGED_DIR METRICS_JSON NEIGHBOURS_DIR
                              OUT_DIR STACK_JSON
params: folds; seed; stack.model ('' off: an empty OUT_DIR, nothing fit), stack.neighbours,
        stack.c; mlflow (the pipeline's parent run receives the scores)
reads the temperature evaluate fit (METRICS_JSON) and the neighbours stage's OOF graph
(NEIGHBOURS_DIR/oof_graph.npz, within each validation fold)
writes OUT_DIR/{model.pkl (fit on every OOF row), oof.csv (cross-fitted OOF predictions)} and
STACK_JSON (the stack's OOF figures beside those of the submission without it: the bag,
calibrated and neighbour-averaged where those are on)
"""
from foldwise import params as P, stage
from foldwise.ensemble import stack


def main():
    summary = stack.run(P.load(), stage.paths(__doc__, stack.Paths))
    if summary["model"]:
        monitor = next(iter(summary["oof"]))
        print(f"out-of-fold {monitor}: {summary['oof_bag_is']} {summary['oof_bag'][monitor]:.4f}, "
              f"{summary['model']} over it {summary['oof'][monitor]:.4f}")


if __name__ == "__main__":
    stage.run(main)
