"""preprocess: decode every train and test image once into memory-mappable uint8 arrays.

usage: python stages/preprocess.py DATA_ROOT OUT_DIR
params: data.source; preprocess.height, width, crop, mode, workers
writes OUT_DIR/{train.npy, test.npy, train.csv, test.csv, meta.json} and, for regression
tasks, OUT_DIR/targets.npy (NaN where a value is missing)
"""
from foldwise import params as P, stage
from foldwise.data import preprocess


def main():
    preprocess.run(P.load(), stage.paths(__doc__, preprocess.Paths))


if __name__ == "__main__":
    stage.run(main)
