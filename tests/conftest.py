import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Small example counts keep the whole suite within a few minutes on a 2-core CPU; CI uses the
# same profile. Set HYPOTHESIS_PROFILE=thorough locally for a deeper search.
settings.register_profile(
    "default",
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``).

    The models under test are far too small to gain from intra-op threads, and on a busy machine
    OpenMP threads waiting for a descheduled sibling slow every small op down up to a hundredfold.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
