"""export: the submission file and the bagged model (torch.export .pt2) that reproduces it.

usage: python stages/export.py DATA_ROOT MODELS_DIR PROCESSED_DIR BAGGED_DIR METRICS_JSON
                               NEIGHBOURS_DIR NEIGHBOURS_JSON STACK_DIR STACK_JSON
                               SUBMISSION_CSV MODEL_DIR CHECKS_JSON
params: folds, bag.mean, tta (views inside the model); the temperature and clip bound come
        from METRICS_JSON (fit on OOF by evaluate); with neighbours on, the submission averages
        the model's predictions over NEIGHBOURS_DIR's test graph, clipped at the bound chosen
        after averaging (NEIGHBOURS_JSON); with stack.model set, the submission is the
        second-level model (STACK_DIR) applied to the model's predictions and their test
        neighbours', clipped at the bound chosen on its OOF (STACK_JSON); a logistic stack
        without neighbour features is the exported program's last layer, any other is in the
        submission only; mlflow (the store of the pipeline's parent run)
logs the exported bag as an MLflow model of the parent run that evaluate finished.
"""
from foldwise import params as P, stage
from foldwise.deploy import export


def main():
    print(export.run(P.load(), stage.paths(__doc__, export.Paths)))


if __name__ == "__main__":
    stage.run(main)
