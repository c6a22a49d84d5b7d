"""Test settings: the Triton interpreter on CPU-only machines (set before any kernel module is
imported), no hub access, Dynamo and the forward state (published modality layout) fresh for each
test, the ``gpu`` marker, one CPU's worth of threads per pytest-xdist worker, and no guard-latency
profile in Dynamo's compiles."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    # Workers share the machine's cores (CI: 2 workers on 2 cores). Torch's default of one OpenMP
    # thread per core oversubscribes it, and its small ops then wait at every parallel region's
    # barrier for a descheduled thread (2-4x slower). Before ``import torch``: the processes that
    # tests spawn (mp.spawn ranks, fresh-process checks) inherit the setting.
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    _threads = max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_GPU = torch.cuda.is_available()
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # torch may have been imported before this file


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


@pytest.fixture(autouse=True, scope="session")
def _no_guard_latency_profile():
    """Dynamo times every frame's new guards once, after a cache flush, for a compile metric
    (``torch/_dynamo/guards.py``: ``profile_guard_manager``, "This cache flush is expensive"):
    ~20 ms a frame, 10-15% of compiling a tiny VLM, and no test reads the metric. The guards are
    still built and checked on the frame that made them."""
    import torch._dynamo.guards as guards

    with pytest.MonkeyPatch.context() as patch:
        if hasattr(guards, "profile_guard_manager"):
            patch.setattr(guards, "profile_guard_manager", lambda *args, **kwargs: 0.0)
        yield


@pytest.fixture
def one_thread():
    """One torch thread for a test of many small ops (under ``-n 0`` too): two OpenMP threads on a
    shared 2-core machine wait at every parallel region for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
