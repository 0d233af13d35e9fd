"""bag: average the folds' test predictions and gather the out-of-fold table.

usage: python stages/bag.py MODELS_DIR PROCESSED_DIR OUT_DIR
params: folds (which fold_k folders), bag.mean (arithmetic | geometric)
writes OUT_DIR/{oof.csv, test.csv}
"""
from foldwise import params as P, stage
from foldwise.ensemble import bag


def main():
    bag.run(P.load(), stage.paths(__doc__, bag.Paths))


if __name__ == "__main__":
    stage.run(main)
