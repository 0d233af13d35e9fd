"""neighbours: each test prediction averaged with those of its k nearest test images in the
bagged models' feature space (cosine), and the same within each validation fold, with that
fold's own model, so that the OOF score with neighbours is honest.

usage: python stages/neighbours.py MODELS_DIR PROCESSED_DIR BAGGED_DIR METRICS_JSON OUT_DIR
                                   NEIGHBOURS_JSON
params: folds; neighbours.k (0: off, nothing computed, the submission unchanged); mlflow (the
        pipeline's parent run receives the scores)
reads the temperature evaluate fit (METRICS_JSON): neighbours average calibrated predictions,
as export does with the exported model's
writes OUT_DIR/{graph.npz (each test image's neighbours: idx, sim), oof_graph.npz (each training
image's, within its validation fold), oof.csv (OOF predictions with neighbours)} and NEIGHBOURS_JSON (OOF scores with and without; for two classes the clip
bound chosen again after averaging)
"""
from foldwise import params as P, stage
from foldwise.ensemble import neighbours


def main():
    neighbours.run(P.load(), stage.paths(__doc__, neighbours.Paths))


if __name__ == "__main__":
    stage.run(main)
