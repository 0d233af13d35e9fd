"""Test-time augmentation: the views are what params.yaml asks, a mirror is a true mirror,
and keypoints predicted in a warped view come back to the image's own frame."""
import numpy as np
import pytest
import timm
import torch
from torch import nn

from foldwise import params as P
from foldwise.train import tta
from foldwise.errors import InputError
from foldwise.tasks import Classification, Keypoints
from foldwise.models import Normalised

OFF = P.build(P.Tta, {"hflip": False, "shift": 0.0, "scale": 0.0})


def test_no_views_means_the_network_itself_and_a_refused_mirror_names_the_key():
    net = nn.Identity()
    assert tta.wrap(net, OFF, Classification(["a", "b"]), True) is net
    with pytest.raises(InputError, match="tta.hflip"):
        tta.views(P.evolve(OFF, {"hflip": True}), hflip_safe=False)
    assert len(tta.views(P.build(P.Tta, {"hflip": True, "shift": 0.05, "scale": 0.1}), True)) == 1 + 1 + 4 + 2


def test_class_outputs_average_the_logits_of_the_image_and_its_mirror():
    """The mirror view through grid_sample is exactly x.flip(-1) (align_corners=False)."""
    torch.manual_seed(0)
    net = Normalised(timm.create_model("resnet10t", num_classes=3), [0.5] * 3, [0.25] * 3).eval()
    x = torch.rand(4, 3, 24, 32)
    wrapped = tta.wrap(net, P.evolve(OFF, {"hflip": True}), Classification(["a", "b"]), True)
    with torch.no_grad():
        want = (net(x) + net(x.flip(-1))) / 2
        torch.testing.assert_close(wrapped(x), want, atol=1e-5, rtol=1e-5)


class SpotFinder(nn.Module):
    """A 'network' that knows where things are: the intensity-weighted centre of the left half
    and of the right half of the image, as (x, y) pairs in grid_sample's [-1, 1] frame."""

    def forward(self, x):
        n, _, h, w = x.shape
        xs = (torch.arange(w, dtype=x.dtype) + 0.5) / w * 2 - 1
        ys = (torch.arange(h, dtype=x.dtype) + 0.5) / h * 2 - 1
        out = []
        for half in (slice(0, w // 2), slice(w // 2, w)):
            m = x[:, 0, :, half]
            total = m.sum(dim=(1, 2))
            out += [(m.sum(1) * xs[half]).sum(1) / total, (m.sum(2) * ys).sum(1) / total]
        return torch.stack(out, 1)


def blobs(centres, h=48, w=64):
    """One image per row of `centres`: two Gaussian spots at (x, y) pixel positions."""
    yy, xx = np.mgrid[0:h, 0:w]
    imgs = []
    for (x1, y1, x2, y2) in centres:
        img = sum(np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 1.5 ** 2)) for cx, cy in ((x1, y1), (x2, y2)))
        imgs.append(img)
    return torch.tensor(np.stack(imgs)[:, None], dtype=torch.float32)


def test_keypoints_come_back_from_every_view_to_the_image_frame():
    """Shifted, zoomed and mirrored views of two spots, taken back through A p + t (and the
    mirror's left/right swap), agree with the plain view; without the swap they would not."""
    x = blobs([(20, 20, 44, 28), (16, 30, 40, 18), (24, 24, 48, 22)])
    net = SpotFinder()
    plain = net(x)
    task = Keypoints(["l_x", "l_y", "r_x", "r_y"], (x.shape[2], x.shape[3]), [[0, 2], [1, 3]])
    for cfg in (P.evolve(OFF, {"hflip": True}), P.evolve(OFF, {"shift": 0.05}), P.evolve(OFF, {"scale": 0.1})):
        wrapped = tta.wrap(net, cfg, task, True)
        for theta in wrapped.thetas:  # every single view, mapped back, finds the same spots
            one = tta.TTA(net, torch.cat([torch.eye(2, 3)[None], theta[None]]), True, 4,
                          [(0, 2), (1, 3)])
            both = one(x)  # mean of plain and this view: equal to plain when the view agrees
            torch.testing.assert_close(both, plain, atol=0.01, rtol=0)
    unswapped = tta.TTA(net, tta.views(P.evolve(OFF, {"hflip": True}), True), True, 4, [])
    assert (unswapped(x) - plain).abs().max() > 0.1
