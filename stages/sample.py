"""sample: write the embedded synthetic data set in the configured source's layout.

usage: python stages/sample.py OUT_DIR
params: sample.seed, data.source, sample.<source> (the sample's size and variant)
"""

import dataclasses

from foldwise import params as P, stage
from foldwise.data.sources import get_source


def main():
    out, = stage.arguments(__doc__, ("out_dir", "where the sample goes (replaced whole)"))
    params = P.load()
    source = params.data.source
    options = dataclasses.asdict(getattr(params.sample, source))
    get_source(source).write_sample(out, seed=params.sample.seed, **options)


if __name__ == "__main__":
    stage.run(main)
