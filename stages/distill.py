"""distill: one network trained against the shipped ensemble's class probabilities, exported
like the bag, so deployment costs one forward pass instead of one per fold.

usage: python stages/distill.py DATA_ROOT MODELS_DIR PROCESSED_DIR BAGGED_DIR METRICS_JSON
                                NEIGHBOURS_DIR STACK_DIR STACK_JSON OUT_DIR DISTILL_JSON
                                HISTORY_CSV
params: distill.model ('' off: an empty OUT_DIR, nothing trained; else a timm name),
        distill.epochs (0: train.epochs); seed, lr and train.* (the student trains with the
        folds' recipe); mlflow (its run is a child of the pipeline's parent)
the teacher: the stack stage's model where stack.model is set (its cross-fitted OOF rows and
its test predictions), else the bag (OOF and test rows, tempered as export tempers them)
writes OUT_DIR/{model/ (bagged.pt2 with one network + meta.json: foldwise-predict reads it),
submission.csv}, DISTILL_JSON (test fidelity to the teacher; the training images' figures,
which are not out-of-fold) and the per-epoch HISTORY_CSV; the speed stage times the student
beside the exported bag (so a new export never retrains the student)
"""
from foldwise import params as P, stage
from foldwise.deploy import distill


def main():
    figures = distill.run(P.load(), stage.paths(__doc__, distill.Paths))
    if figures["model"]:
        fid = figures.get("test_fidelity") or figures["test_fidelity_not_held_out"]
        print(f"distilled {figures['model']} from the {figures['teacher']}: test agreement "
              f"{fid['agreement']:.4f}, cross-entropy {fid['logloss']:.4f}; MLflow model "
              f"{figures['mlflow_model']}")


if __name__ == "__main__":
    stage.run(main)
