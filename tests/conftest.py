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


def _interpreter_refuses_numpy() -> bool:
    """Triton 3.6's interpreter reads a loop bound from a program id with ``int()`` of a 1-element
    array (``interpreter.py``: ``int(self.handle.data)``), which NumPy 2.4 refuses ("only
    0-dimensional arrays can be converted to Python scalars"); Triton 3.7 squeezes it first."""
    import numpy as np
    import triton

    if tuple(int(x) for x in triton.__version__.split(".")[:2]) >= (3, 7):
        return False
    try:
        int(np.array([1]))
    except TypeError:
        return True
    return False


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_cpu_kernel = pytest.mark.skip(reason="CPU kernel tests need TRITON_INTERPRET=1 (gpu tests cover the kernel here)")
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    skip_numpy = pytest.mark.skip(reason="this Triton's interpreter cannot run with this NumPy (triton < 3.7 needs "
                                         "numpy < 2.4); the kernels run in the interpreter with triton >= 3.7")
    broken = interpreting and any("interpreter" in item.keywords for item in items) and _interpreter_refuses_numpy()
    for item in items:
        if "gpu" in item.keywords and not HAS_GPU:
            item.add_marker(skip_gpu)
        if "interpreter" in item.keywords and not interpreting:
            item.add_marker(skip_cpu_kernel)
        elif "interpreter" in item.keywords and broken:
            item.add_marker(skip_numpy)


@pytest.fixture(autouse=True)
def _reset_dynamo():
    from mmcompile.runtime import ForwardState, forward_scope

    torch._dynamo.reset()
    with forward_scope(ForwardState()):  # a layout one test's forward published must not reach the next
        yield
    torch._dynamo.reset()
