"""A DVC remote shares data, cache and models: one clone pushes, a fresh clone pulls, and its
`dvc repro` finds everything up to date and trains nothing."""
from conftest import make_project, sh, tiny_statefarm


def test_a_fresh_clone_pulls_from_the_remote_and_retrains_nothing(tmp_path):
    dst = make_project(tmp_path / "project", lambda p: tiny_statefarm(p, 2, 2))
    remote = tmp_path / "remote"
    sh(f"dvc remote add -d shared {remote}", dst)
    sh("dvc repro", dst)
    sh("git add -A && git commit -qm 'results and the remote'", dst)
    sh("dvc push", dst)
    clone = tmp_path / "clone"
    sh(f"git clone -q {dst} {clone}", tmp_path)
    assert not (clone / "models/fold_0").exists() and not (clone / "export/submission.csv").exists()
    sh("dvc pull", clone)
    for path in ("export/submission.csv", "models/fold_1/model.pt", "data/processed/train.npy"):
        assert (clone / path).read_bytes() == (dst / path).read_bytes(), path
    out = sh("dvc repro", clone).stdout
    assert "Running stage" not in out and "up to date" in out, out
    assert not (clone / "mlflow.db").exists()  # nothing ran, so nothing was tracked
