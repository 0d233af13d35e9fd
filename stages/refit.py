"""refit: one network of the folds' recipe trained on every training image (AutoGluon's
refit_full), exported like the bag, with no out-of-fold figure.

usage: python stages/refit.py DATA_ROOT MODELS_DIR PROCESSED_DIR BAGGED_DIR METRICS_JSON
                              OUT_DIR REFIT_JSON HISTORY_CSV
params: refit.epochs (0 off: an empty OUT_DIR, nothing trained; N; auto: the folds' median kept
        epochs, from their run.json); seed, lr, train.* (the folds' recipe) and tta (the bag's
        test-time views, in its program); mlflow (its run is a child of the pipeline's parent)
writes OUT_DIR/{model/ (bagged.pt2 with one network + meta.json: foldwise-predict reads it),
submission.csv}, REFIT_JSON (in-sample figures, its agreement with the bag on the test images,
`oof: null`) and the per-epoch HISTORY_CSV (in-sample figures: `insample_*`)
"""
from foldwise import params as P, stage
from foldwise.deploy import refit


def main():
    figures = refit.run(P.load(), stage.paths(__doc__, refit.Paths))
    if figures["epochs"]:
        near = figures["vs_bag_on_test"]
        agree = f"top class as the bag's on {near['agreement']:.1%} of the test images, " \
            if "agreement" in near else ""
        print(f"refit {figures['model']} for {figures['epochs']} epochs ({figures['epochs_from']}) "
              f"on every training image: {agree}mean |refit - bag| {near['mean_abs_diff']:.4f}; "
              f"no out-of-fold figure; MLflow model {figures['mlflow_model']}")


if __name__ == "__main__":
    stage.run(main)
