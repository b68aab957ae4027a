"""Shared test set-up: one dataset root for every test, and synthetic-data fixtures.

``DETECTRON2_DATASETS`` defaults to ``<repo>/datasets`` and is set here, before any
test imports solo_d2 or detectron2 (both read it at import time). Generation is
atomic and stamped, so pytest-xdist workers can ask for the same data at once.
"""

import os

from tests.helpers import REPO_ROOT

os.environ.setdefault("DETECTRON2_DATASETS", str(REPO_ROOT / "datasets"))

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module's tests: the CPU is shared by several processes and
    one thread per process is far faster there (``pytestmark = usefixtures("single_thread")``)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def dataset_root():
    """The dataset root every solo_d2 loader uses in this test session."""
    from solo_d2.data import get_dataset_root

    return get_dataset_root()


@pytest.fixture(scope="session")
def synthetic_coco(dataset_root):
    """Path of the generated ``synthetic_coco`` tree (``{train,val}/``, ``annotations/``)."""
    from solo_d2.data import generate_synthetic_coco

    return generate_synthetic_coco(dataset_root)


@pytest.fixture(scope="session")
def synthetic_cityscapes(dataset_root):
    """Path of the generated ``synthetic_cityscapes`` tree (``leftImg8bit/``, ``gtFine/``)."""
    from solo_d2.data import generate_synthetic_cityscapes

    return generate_synthetic_cityscapes(dataset_root)


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs 2 workers on 2 cores) each worker uses one
    torch thread, so the workers do not oversubscribe the cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
