"""check: every key of params.yaml against foldwise's params schema (types, allowed values,
ranges, timm's model and optimizer names), before any stage that writes results runs.

usage: python stages/check.py OUT
params: all of params.yaml
writes OUT, the same line every time (the stages after it depend on it, so they wait for the
check and a bad value stops the pipeline here, with nothing else run or removed)
"""
from foldwise import names, stage


def main():
    out, = stage.arguments(__doc__, ("out", "the marker the later stages depend on"))
    names.check("params.yaml", out)


if __name__ == "__main__":
    stage.run(main)
