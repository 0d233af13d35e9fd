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
import json
from pathlib import Path

from foldwise import params as P, stage
from foldwise.deploy.ship import ship
from foldwise.tasks import create_task

ARGUMENTS = (("root", "the data set (some submissions follow its lookup table)"),
             ("models", "folder of the fold_k checkpoints"), ("processed", "the preprocess cache"),
             ("bagged", "bag's output (test.csv)"), ("metrics_json", "evaluate's metrics.json"),
             ("neighbours_dir", "the neighbours stage's test graph"),
             ("neighbours_json", "the neighbours stage's scores"),
             ("stack_dir", "the stack stage's model"), ("stack_json", "the stack stage's scores"),
             ("submission", "the competition file to write"),
             ("model_dir", "the exported bag's folder"),
             ("checks", "what the export checked and logged (JSON, for foldwise-report)"))


def main():
    paths = dict(zip([name for name, _ in ARGUMENTS], stage.arguments(__doc__, *ARGUMENTS)))
    params = P.load()
    meta = json.loads((Path(paths["processed"]) / "meta.json").read_text())
    print(ship(params, create_task(meta, params), meta, paths))


if __name__ == "__main__":
    stage.run(main)
