"""split: assign every training image a validation fold, grouped by subject and, with
`split.dedupe`, by clusters of near-duplicate images.

usage: python stages/split.py DATA_ROOT OUT_CSV DUPLICATES_CSV DUPLICATES_PNG
params: folds, data.source, split.seed, split.dedupe, split.hash_distance
writes OUT_CSV (id, group, label, fold), DUPLICATES_CSV (the near-duplicate clusters found,
largest first; empty when dedupe is off) and DUPLICATES_PNG (a contact sheet of the largest)
"""
from foldwise import params as P, stage
from foldwise.data import split


def main():
    split.run(P.load(), stage.paths(__doc__, split.Paths))


if __name__ == "__main__":
    stage.run(main)
