"""split: assign every training image a validation fold, grouped by subject and, with
`split.dedupe`, by clusters of near-duplicate images.

usage: python stages/split.py DATA_ROOT OUT_CSV DUPLICATES_CSV DUPLICATES_PNG
params: folds, data.source, split.seed, split.dedupe, split.hash_distance
writes OUT_CSV (id, group, label, fold), DUPLICATES_CSV (the near-duplicate clusters found,
largest first; empty when dedupe is off) and DUPLICATES_PNG (a contact sheet of the largest)
"""
from foldwise import params as P, stage
from foldwise.data.split import split


def main():
    root, out, dup_csv, dup_png = stage.arguments(
        __doc__, ("data_root", "the data set, in data.source's layout"),
        ("out_csv", "the fold table to write"), ("duplicates_csv", "near-duplicate clusters found"),
        ("duplicates_png", "contact sheet of the largest clusters"))
    split(P.load(), root, out, dup_csv, dup_png)


if __name__ == "__main__":
    stage.run(main)
