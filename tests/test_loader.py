"""The loader's two ways to a device batch give the same rows: gathered on the host (a thread,
pinned buffers on CUDA) and gathered on the device from an array kept there whole (on a GPU
when the array takes at most a tenth of it; here forced on the CPU with a byte budget)."""
import gc

import numpy as np
import torch

from foldwise.train import loader

CPU = torch.device("cpu")


def cache(n=40, seed=0, path=None):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 6, 5, 3), dtype=np.uint8)
    if path is None:
        return x
    np.save(path, x)
    return loader.open_cache(path)


def rows(batches_of, array, resident):
    return [b.numpy().copy() for b in loader.device_batches(array, batches_of, CPU,
                                                            resident=resident)]


def test_an_array_kept_whole_gives_the_batches_the_host_gathers(tmp_path):
    """A memory-mapped cache, its rows through `Rows` (a fold's training rows), random sorted
    batches and a short last one: the same uint8 rows in the same order both ways, and on the
    CPU the default budget is none (the host path)."""
    x = cache(path=tmp_path / "train.npy")
    train = loader.Rows(x, np.arange(3, 37))
    order = np.random.default_rng(1).permutation(len(train))
    batches = [np.sort(order[i:i + 8]) for i in range(0, len(order), 8)]
    host = rows(batches, train, resident=0)
    assert loader.RESIDENT.tensor is None and loader.resident_budget(CPU) == 0
    kept = rows(batches, train, resident=1 << 20)
    assert loader.RESIDENT.tensor is not None and loader.RESIDENT.tensor.shape == x.shape
    assert [len(b) for b in kept] == [8, 8, 8, 8, 2]
    for a, b, idx in zip(host, kept, batches):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(b, x[3 + idx])
    loader.RESIDENT.release()


def test_the_array_kept_whole_is_copied_once_replaced_by_another_and_freed_with_its_array(tmp_path):
    """Validation (rows of the same cache) reuses the copy training made; the test cache
    replaces it; an array that goes is let go; one over the budget is not kept at all."""
    x = cache(path=tmp_path / "train.npy")
    rows([np.arange(10)], loader.Rows(x, np.arange(20)), resident=1 << 20)
    first = loader.RESIDENT.tensor
    np.testing.assert_array_equal(first.numpy(), x)
    rows([np.arange(5)], loader.Rows(x, np.arange(20, 40)), resident=1 << 20)
    assert loader.RESIDENT.tensor is first  # not copied again
    test = cache(n=12, seed=2)
    got = rows(loader.sequential(len(test), 5), test, resident=1 << 20)
    np.testing.assert_array_equal(np.concatenate(got), test)
    assert loader.RESIDENT.tensor is not first and loader.RESIDENT.tensor.shape[0] == 12
    del test, got
    gc.collect()
    assert loader.RESIDENT.tensor is None
    big = cache(n=40, seed=3)
    got = rows(loader.sequential(len(big), 16), big, resident=big.nbytes - 1)
    np.testing.assert_array_equal(np.concatenate(got), big)
    assert loader.RESIDENT.tensor is None


def test_the_reduced_size_decode_line_is_printed_for_jpeg_only(tmp_path, capsys):
    """Preprocess said "JPEG decoded at 1 of full size" for PNG images too, which are never
    decoded at reduced size; now only JPEG training images get the line."""
    import pandas as pd
    from PIL import Image

    from foldwise.data.cache import Decode
    from foldwise.data.preprocess import report_decode_scale
    size = Decode(32, 32)
    for fmt in ("PNG", "JPEG"):
        path = tmp_path / f"a.{fmt.lower()}"
        Image.new("RGB", (256, 256), "grey").save(path, fmt)
        report_decode_scale(pd.Series([path]), size)
    out = capsys.readouterr().out
    assert out == "preprocess: JPEG decoded at 0.125 of full size\n"
