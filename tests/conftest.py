"""Suite-wide settings: tests use tiny models, for which one intra-op thread is fastest (and two
threads per process thrash when pytest shares 2 cores with anything else)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a whole module, restored after it (for modules whose probes must
    not inherit a thread count a test elsewhere set: ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
