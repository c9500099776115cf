"""Session-wide test settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    # Tests use tiny tensors; on 2 shared cores torch's intra-op threads only add contention
    # (the model tests ran ~25x slower with 2 threads under load). Restored afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
