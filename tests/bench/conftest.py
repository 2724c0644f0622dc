"""One torch CPU thread for these tests: on a busy shared machine, multi-threaded CPU
kernels stall for hundreds of milliseconds per call while threads wait for each other; the
tests check what the tools write, not speed. Restored afterwards."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_cpu_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
