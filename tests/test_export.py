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
