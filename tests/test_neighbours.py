"""Test-neighbour averaging: the neighbour graph against scikit-learn's exact cosine search,
neighbours of OOF rows only within their own validation fold, the averaging by hand, and the
features are timm's pre-logits of the very network."""
import numpy as np
import pytest
import timm
import torch
from sklearn.neighbors import NearestNeighbors

from foldwise.ensemble import knn
from foldwise.models import Normalised


def unit_rows(n, d, seed=0):
    f = np.random.default_rng(seed).normal(size=(n, d))
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def test_graph_matches_an_exact_cosine_search_across_blocks():
    f = unit_rows(300, 16)
    idx, sim = knn.graph(f, 5, block=64)  # several blocks
    ref = NearestNeighbors(n_neighbors=6, metric="cosine", algorithm="brute").fit(f)
    dist, ref_idx = ref.kneighbors(f)
    assert (ref_idx[:, 0] == np.arange(300)).all()  # itself first: graph leaves it out
    np.testing.assert_array_equal(idx, ref_idx[:, 1:])
    np.testing.assert_allclose(sim, 1 - dist[:, 1:], atol=1e-5)


def test_oof_neighbours_stay_inside_their_validation_fold():
    f = unit_rows(120, 8, seed=1)
    folds = np.arange(120) % 4
    idx, sim = knn.grouped_graph(f, folds, 3)
    assert (folds[idx] == folds[:, None]).all()
    assert not (idx == np.arange(120)[:, None]).any()
    for k in range(4):  # the same neighbours as a search over that fold's rows alone
        rows = np.flatnonzero(folds == k)
        local, _ = knn.graph(f[rows], 3)
        np.testing.assert_array_equal(idx[rows], rows[local])


def test_a_fold_smaller_than_k_pads_with_weightless_neighbours():
    f = unit_rows(7, 4, seed=2)
    folds = np.array([0, 0, 1, 1, 1, 1, 1])
    idx, sim = knn.grouped_graph(f, folds, 3)
    assert (sim[:2, 1:] == 0).all() and (idx[:2, 0] == [1, 0]).all()
    preds = np.random.default_rng(0).dirichlet(np.ones(3), 7)
    out = knn.smooth(preds, idx, sim)
    w = max(sim[0, 0], 0)
    np.testing.assert_allclose(out[0], (preds[0] + w * preds[1]) / (1 + w))


def test_smooth_weighs_itself_one_and_each_neighbour_its_similarity():
    preds = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    idx = np.array([[1, 2], [0, 2], [0, 1]])
    sim = np.array([[0.5, -0.3], [0.5, 0.25], [0.2, 0.25]])
    out = knn.smooth(preds, idx, sim)
    np.testing.assert_allclose(out[0], (preds[0] + 0.5 * preds[1]) / 1.5)  # negative counts 0
    np.testing.assert_allclose(out[1], (preds[1] + 0.5 * preds[0] + 0.25 * preds[2]) / 1.75)
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    empty = knn.smooth(preds, np.zeros((3, 0), dtype=int), np.zeros((3, 0)))
    np.testing.assert_array_equal(empty, preds)  # k = 0 changes nothing


def test_features_are_the_networks_pre_logits_normalised():
    torch.manual_seed(0)
    net = Normalised(timm.create_model("resnet10t", num_classes=4), [0.5] * 3, [0.25] * 3).eval()
    images = np.random.default_rng(0).integers(0, 256, (10, 32, 40, 3), dtype=np.uint8)
    got = knn.embed(net, images, torch.device("cpu"), batch_size=4)
    x = (torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        want = net.backbone.forward_head(net.backbone.forward_features(x), pre_logits=True)
    assert got.shape == (10, want.shape[1])
    np.testing.assert_allclose(got, torch.nn.functional.normalize(want, dim=1).numpy(), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(knn.mean_direction([got, got[::-1]]), axis=1), 1.0)


def test_at_most_n_minus_one_neighbours():
    idx, sim = knn.graph(unit_rows(3, 4), 10)
    assert idx.shape == (3, 2)
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(idx[:, 0], np.arange(3))
