"""speed: the distilled student's exported program timed beside the exported bag's, on the same
test images in one process.

usage: python stages/speed.py BAG_MODEL_DIR DISTILLED_DIR PROCESSED_DIR SPEED_JSON
params: distill.model ('' off: SPEED_JSON says so, nothing timed)
writes SPEED_JSON (images timed, the student's and the bag's images/s, the speedup)
"""
from foldwise import params as P, stage
from foldwise.deploy.speed import run


def main():
    bag, distilled, processed, out_json = stage.arguments(
        __doc__, ("bag_model_dir", "the exported bag"), ("distilled_dir", "the distill stage's folder"),
        ("processed_dir", "the preprocess cache (test.npy)"), ("speed_json", "the figures"))
    figures = run(P.load(), bag, distilled, processed, out_json)
    if figures["distill"]:
        print(f"{figures['images']} test images on {figures['device']}: the student "
              f"{figures['student_images_per_s']:.0f} images/s, the bag {figures['bag_images_per_s']:.0f}: "
              f"{figures['speedup']:.1f}x")


if __name__ == "__main__":
    stage.run(main)
