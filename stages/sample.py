"""sample: write the embedded synthetic data set in the configured source's layout.

usage: python stages/sample.py OUT_DIR
params: sample.seed, data.source, sample.<source> (the sample's size and variant), data.root
        (where it is not OUT_DIR, your own data is used: nothing is written but a note)
"""

from foldwise import params as P, stage
from foldwise.data.sources import write_configured_sample


def main():
    out, = stage.arguments(__doc__, ("out_dir", "where the sample goes (replaced whole)"))
    print(write_configured_sample(P.load(), out))


if __name__ == "__main__":
    stage.run(main)
