import numpy as np
import timm
import torch

from foldwise.deploy import export
from foldwise.tasks import Softmax
from foldwise.ensemble.bagging import average
from foldwise.models import Normalised


def nets(n=3):
    torch.manual_seed(0)
    return [Normalised(timm.create_model("resnet10t", num_classes=4), [0.4] * 3, [0.2] * 3).eval()
            for _ in range(n)]


def fold_probs(models, images):
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return [m(x).softmax(1).double().numpy() for m in models]


def test_exported_bag_matches_the_numpy_bagging_for_both_means(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, size=(5, 24, 32, 3), dtype=np.uint8)
    models = nets()
    for mean in ("arithmetic", "geometric"):
        out = tmp_path / mean
        export.save(export.Bagged(models, Softmax(), mean), torch.from_numpy(images[:2]),
                    {"bag_mean": mean}, out)
        loaded, meta = export.load(out)
        assert meta == {"bag_mean": mean}
        got = export.run_model(loaded, images, batch_size=3)  # another batch size than traced
        np.testing.assert_allclose(got, average(fold_probs(models, images), mean), atol=1e-6)


def test_predict_refuses_to_pass_the_programs_predictions_off_as_a_submission_it_does_not_hold(tmp_path):
    """foldwise-predict and the MLflow model dropped test-neighbour averaging and a second-level
    model outside the program without a word; now every such configuration is named."""
    import json

    import pytest
    from PIL import Image

    from foldwise.deploy.predict import predict_folder
    from foldwise.errors import InputError
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 3, 2))
    bag = export.Bagged([net], Softmax(), "arithmetic")
    meta = {"source": "folders", "task": "classification", "classes": ["a", "b"],
            "target_names": [], "image_size": [4, 4], "flip_pairs": [], "decision": {},
            "preprocess": {"height": 4, "width": 4, "crop": [0, 0, 1, 1], "mode": "RGB"},
            "neighbours": 0, "stack": {"model": ""}}
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (4, 4), (40 * i, 90, 200)).save(images / f"{i}.png")
    cases = [({}, []),
             ({"stack": {"model": "logistic", "neighbours": 0, "in_program": True}}, []),
             ({"neighbours": 3}, ["neighbours.k=3 (averaging over the whole test set)"]),
             ({"stack": {"model": "hist_gradient_boosting", "neighbours": 0, "in_program": False}},
              ["stack.model=hist_gradient_boosting (not a layer of the program)"]),
             ({"neighbours": 2, "stack": {"model": "logistic", "neighbours": 2, "in_program": False}},
              ["stack.model=logistic with stack.neighbours=2 (not a layer of the program)"]),
             # a stack in the program is the submission: the neighbours then only feed stacks
             ({"neighbours": 3, "stack": {"model": "logistic", "neighbours": 0, "in_program": True}}, [])]
    for change, named in cases:
        export.save(bag, torch.zeros((2, 4, 4, 3), dtype=torch.uint8), {**meta, **change}, tmp_path / "m")
        assert export.set_level(json.loads((tmp_path / "m/meta.json").read_text())) == named
        if not named:
            predict_folder(tmp_path / "m", images, tmp_path / "p.csv", workers=1)
            continue
        with pytest.raises(InputError, match="foldwise-predict would not reproduce it") as err:
            predict_folder(tmp_path / "m", images, tmp_path / "p.csv", workers=1)
        assert all(n in str(err.value) for n in named)
        predict_folder(tmp_path / "m", images, tmp_path / "p.csv", workers=1, bag_only=True)
