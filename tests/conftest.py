import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


@pytest.fixture(scope="session")
def statefarm_sample(tmp_path_factory):
    """A small synthetic State Farm set, written once per test session."""
    from foldwise.sources import statefarm

    root = tmp_path_factory.mktemp("statefarm") / "data"
    statefarm.write_sample(root, drivers=6, per_class=3, test_drivers=1, test_per_class=1, seed=1)
    return root
