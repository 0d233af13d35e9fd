"""check: every key of params.yaml against foldwise's params schema (types, allowed values,
ranges, timm's model and optimizer names), before any stage that writes results runs.

usage: python stages/check.py OUT
params: all of params.yaml
writes OUT, the same line every time (the stages after it depend on it, so they wait for the
check and a bad value stops the pipeline here, with nothing else run or removed)
"""
from foldwise import stage
from foldwise.data import check


def main():
    check.run("params.yaml", stage.paths(__doc__, check.Paths))


if __name__ == "__main__":
    stage.run(main)
