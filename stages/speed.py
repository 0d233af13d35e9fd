"""speed: the one-network programs (the distilled student, the refit network) timed beside the
exported bag's, on the same test images in one process.

usage: python stages/speed.py BAG_MODEL_DIR DISTILLED_DIR REFIT_DIR PROCESSED_DIR SPEED_JSON
params: distill.model, refit.epochs ('' and 0: SPEED_JSON says so, nothing timed)
writes SPEED_JSON (images timed, each program's images/s, each one-network program's speedup)
"""
from foldwise import params as P, stage
from foldwise.deploy import speed


def main():
    figures = speed.run(P.load(), stage.paths(__doc__, speed.Paths))
    for key, name, speedup in (("student", "the student", "speedup"),
                               ("refit", "the refit network", "refit_speedup")):
        if speedup in figures:
            print(f"{figures['images']} test images on {figures['device']}: {name} "
                  f"{figures[key + '_images_per_s']:.0f} images/s, the bag "
                  f"{figures['bag_images_per_s']:.0f}: {figures[speedup]:.1f}x")


if __name__ == "__main__":
    stage.run(main)
