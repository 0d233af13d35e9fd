"""sample: write the embedded synthetic data set in the configured source's layout.

usage: python stages/sample.py OUT_DIR
params: sample.seed, data.source, sample.<source> (the sample's size and variant), data.root
        (where it is not OUT_DIR, your own data is used: nothing is written but a note)
"""

from foldwise import params as P, stage
from foldwise.data import sample


def main():
    print(sample.run(P.load(), stage.paths(__doc__, sample.Paths)))


if __name__ == "__main__":
    stage.run(main)
