"""What the CPU can show of the CUDA paths: decisions that depend on the device, made with the
device's answers stood in for (capability, CUDA started), and the set-up that must happen
before several GPUs start. The CUDA runs themselves are the `gpu` tests (tests/test_gpu.py)."""
import logging
from pathlib import Path

import pytest
import torch

from foldwise import params as P
from foldwise.errors import InputError
from foldwise.train import distributed
from foldwise.train.loop import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_each_rank_draws_its_own_masks_and_rank_0_keeps_the_folds_seed(monkeypatch):
    assert distributed.rank_seed(5) == 5  # one process: unchanged, so CPU results stay the same
    seeds = set()
    for r in range(4):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        seeds.add(distributed.rank_seed(5))
    assert len(seeds) == 4


@pytest.mark.parametrize("capability, native", [((7, 5), False), ((7, 0), False), ((8, 0), True),
                                                ((9, 0), True)])
def test_bfloat16_runs_only_where_the_gpu_has_it(monkeypatch, caplog, capability, native):
    """T4 (7.5) and V100 (7.0) pass torch's is_bf16_supported by emulation and train slower
    than in float32: there a fold trains in float32 and says so; A100 (8.0) and H100/H200 (9.0)
    use bfloat16. A CPU trains in float32 even with AMX: its bfloat16 kernels gave a
    different fold on each run of the same seed (benchmarks/cpu_bf16.py)."""
    monkeypatch.setattr(distributed, "_capability", lambda index: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a GPU")
    distributed._WARNED.clear()
    train = P.load(ROOT / "params.yaml").train
    with caplog.at_level(logging.WARNING, logger="foldwise.train.distributed"):
        amp = Settings(train, 1e-3, 0, torch.device("cuda", 0)).amp
    assert amp is native and train.amp
    assert ("no native bfloat16" in caplog.text) is (not native)
    assert Settings(train, 1e-3, 0, torch.device("cpu")).amp is False


def test_the_mlflow_models_requirements_carry_no_local_build_label(monkeypatch):
    from importlib import metadata
    from foldwise.deploy import mlmodel
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "2.14.1+cu128" if name == "torch" else real(name))
    reqs = mlmodel.requirements()
    assert "torch==2.14.1" in reqs and not any("+" in r for r in reqs)


def test_the_predict_pool_is_spawned_once_cuda_has_started(monkeypatch):
    from foldwise.data.cache import pool_start_method
    assert pool_start_method() == "fork"  # nothing started: forking is cheap and safe
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert pool_start_method() == "spawn"


def test_workers_elsewhere_are_never_handed_a_sqlite_file():
    from foldwise.scale.workers import check_store_for_workers
    check_store_for_workers("sqlite:////project/mlflow.db", None)  # a local Ray: same machine
    check_store_for_workers("http://10.0.0.5:5000", "ray://head:10001")
    with pytest.raises(InputError, match="cannot log to sqlite:////project/mlflow.db"):
        check_store_for_workers("sqlite:////project/mlflow.db", "ray://head:10001")


def test_the_tracking_store_is_reached_before_several_gpus_start(monkeypatch, tmp_path):
    """With train.devices > 1 the fold's process opens MLflow before it relaunches itself under
    torchrun: an unreachable server fails there, not while the other ranks wait in DDP's
    constructor for rank 0 until NCCL times out."""
    import json
    from foldwise.train import train
    (tmp_path / "meta.json").write_text(json.dumps({"hflip_safe": False}))
    params = P.evolve(P.load(ROOT / "params.yaml"), {"train": {"devices": 2}})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setattr(distributed, "relaunch", lambda devices: pytest.fail("relaunched first"))
    import mlflow
    try:
        with pytest.raises(Exception) as err:
            train.run(params, train.Paths(0, tmp_path / "folds.csv", tmp_path, tmp_path / "out",
                                          tmp_path / "h.csv"))
    finally:
        mlflow.set_tracking_uri(None)  # this process's later tests choose their own store
    assert "127.0.0.1:9" in str(err.value) or "Connection" in type(err.value).__name__ + str(err.value)
