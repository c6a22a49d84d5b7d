"""Test settings: the Triton interpreter on CPU-only machines (set before any kernel module is
imported), no hub access, Dynamo and the forward state (published modality layout) fresh for each
test, and the ``gpu`` marker."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_GPU = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_cpu_kernel = pytest.mark.skip(reason="CPU kernel tests need TRITON_INTERPRET=1 (gpu tests cover the kernel here)")
    for item in items:
        if "gpu" in item.keywords and not HAS_GPU:
            item.add_marker(skip_gpu)
        if "interpreter" in item.keywords and os.environ.get("TRITON_INTERPRET") != "1":
            item.add_marker(skip_cpu_kernel)


@pytest.fixture(autouse=True)
def _reset_dynamo():
    from mmcompile.runtime import ForwardState, forward_scope

    torch._dynamo.reset()
    with forward_scope(ForwardState()):  # a layout one test's forward published must not reach the next
        yield
    torch._dynamo.reset()
