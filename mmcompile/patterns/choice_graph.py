"""A layer's estimate and head choice, captured once per forward as a CUDA graph and replayed by the
forward's other layers.

Why: on Hopper the online op is bound by the host issuing ops, not by the GPU (128K tokens on the
H100: ~2900 kernel launches per layer). The estimate and the policy's tables are about half of
them, and they have the same shapes in every layer of a forward (N, layout, heads, options), up to
the layer's one host sync (``policy.read_tables``). A replay issues them as one launch. After the
sync the index shapes depend on the choice, so that part stays eager.

How: static buffers for k and q, into which each call copies k and only the estimation rows of q
(``ctx.last_rows``: the estimate reads no other row of q; the other rows of the buffer hold NaN,
so a read of one would show). The first call per forward and key runs the choice eagerly on the
buffers on a side stream (a warm-up: Triton compiles, ``device_list`` caches fill; its result
serves that call), then captures it on that stream into a private memory pool. Later calls copy
and replay. The tensors the estimate cached are handed to an ``Estimates`` of the real q and k
(``Estimates.adopting``), so the index builders after the sync read them, and whatever they
compute anew (the held-out rows' dense log-sum-exp) comes from the real inputs. The graphs live
in ``ForwardContext.replays``: they go, with their memory, when the forward's context does.

While captured, the policy's independent parts (each row set; A-shape, VS and Grid of a row set)
are captured on forked streams (``side_by_side``): each is a chain of small kernels that fills a
fraction of the GPU, so the replay runs them side by side instead of one after another.

A capture that fails (an op that syncs with the host, an unsupported call) is logged once and the
forward runs eagerly from then on. Off on CPUs, while a stream is being captured already, above
``MAX_TOKENS`` (the q buffer is q's size) and with ``MMINFERENCE_CUDA_GRAPHS=0``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Callable

import torch

from mmcompile._once import Once

log = logging.getLogger(__name__)
_ONCE = Once()

MAX_TOKENS = 262144  # the q buffer costs q's memory: 1.75 GiB at 256K tokens with 28 heads of 128 in bf16
EAGER = "eager"  # ``ForwardContext.replays`` value of a key whose capture failed


class CaptureFailed(RuntimeError):
    """The capture of work that runs eagerly (the warm-up passed) failed."""


def graphs_apply(q: torch.Tensor) -> bool:
    """Whether this call's choice may be captured (see the module docstring)."""
    return (q.is_cuda and q.shape[2] <= MAX_TOKENS and os.environ.get("MMINFERENCE_CUDA_GRAPHS", "1") != "0"
            and not torch.cuda.is_current_stream_capturing())


@dataclasses.dataclass
class _Replay:
    """Static inputs and the replay of one captured choice."""
    q: torch.Tensor
    k: torch.Tensor
    batch_ids: torch.Tensor  # int64 [B, R]: with ``rows``, the q rows the estimate reads
    rows: torch.Tensor
    run: Callable[[], tuple] | None = None  # -> (Estimates, tables) in the graph's memory

    def fill(self, q: torch.Tensor, k: torch.Tensor) -> None:
        self.k.copy_(k)
        self.q[self.batch_ids, :, self.rows] = q[self.batch_ids, :, self.rows]


def estimate_and_choose(q, k, ctx, scale: float, choose: Callable, key: tuple, capture: Callable | None = None):
    """(Estimates of q and k, ``choose(estimates)``): what ``Estimates`` then ``choose`` give, from a
    replay when this forward captured the same ``key`` before (``key`` must name everything
    ``choose`` depends on besides q, k and ``ctx``). ``choose`` must not sync with the host.
    ``capture(fn) -> (fn's result, replay)``, raising ``CaptureFailed`` when only the capture
    failed (default: a CUDA graph where ``graphs_apply``); tests pass one that re-runs ``fn`` to
    check the buffers' contract on a CPU."""
    from .estimates import Estimates

    if capture is None and graphs_apply(q):
        capture = functools.partial(cuda_graph, device=q.device)
    replay = ctx.replays.get(key) if capture is not None else EAGER
    if replay == EAGER:
        estimates = Estimates(q, k, ctx, scale)
        return estimates, choose(estimates)
    if replay is not None:
        replay.fill(q, k)
        estimates, tables = replay.run()
        return estimates.adopting(q, k), tables
    rows = torch.cat([ctx.last_rows[name][0] for name in ctx.last_rows], dim=1)
    batch_ids = torch.arange(rows.shape[0], device=rows.device)[:, None].expand_as(rows)
    replay = _Replay(torch.full_like(q, float("nan")), torch.empty_like(k), batch_ids, rows)
    replay.fill(q, k)

    def run_on_buffers():
        estimates = Estimates(replay.q, replay.k, ctx, scale)
        return estimates, choose(estimates)

    try:
        (estimates, tables), replay.run = capture(run_on_buffers)
    except CaptureFailed as e:  # the forward goes on eagerly (an error of ``choose`` itself propagates)
        ctx.replays[key] = EAGER
        _ONCE.log(log, logging.WARNING, type(e).__name__, "mminference: the layer's estimate and choice could not "
                  "be captured as a CUDA graph (%s: %s); running them eagerly", type(e).__name__, e)
        estimates = Estimates(q, k, ctx, scale)
        return estimates, choose(estimates)
    ctx.replays[key] = replay
    return estimates.adopting(q, k), tables


def side_by_side(parts: list[Callable], device) -> list:
    """Each part's result. While the current stream is being captured, the parts after the first
    are captured on streams forked from it and joined back before returning, so a replay runs
    them concurrently (the parts must be independent: they may read the same inputs, never each
    other's results). Otherwise they run in turn on the current stream: eagerly, tensors made on
    one stream and freed while another still reads them would need ``record_stream`` (during a
    capture the graph's private pool and its fixed replay order make that safe)."""
    device = torch.device(device)
    if len(parts) < 2 or device.type != "cuda" or not torch.cuda.is_current_stream_capturing():
        return [part() for part in parts]
    main = torch.cuda.current_stream(device)
    forks = [torch.cuda.Stream(device) for _ in parts[1:]]
    results = [None] * len(parts)
    for i, (fork, part) in enumerate(zip(forks, parts[1:]), 1):
        fork.wait_stream(main)
        with torch.cuda.stream(fork):
            results[i] = part()
    results[0] = parts[0]()
    for fork in forks:
        main.wait_stream(fork)
    return results


def cuda_graph(fn: Callable, device: torch.device):
    """(fn(), replay): ``fn`` run once on a side stream of ``device`` (the warm-up, whose result is
    returned), then captured on that stream; ``replay()`` re-runs the captured work on the device's
    current stream and returns the tensors the capture produced, overwritten. ``torch.cuda.graph``
    is not used: it empties the allocator's cache, which slows the rest of the forward."""
    with torch.cuda.device(device):
        return _capture(fn, device)


def _capture(fn: Callable, device: torch.device):
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        first = fn()  # an error here is fn's own: it propagates as it is
        graph = torch.cuda.CUDAGraph()
        try:
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                captured = fn()
            finally:
                graph.capture_end()
        except Exception as e:
            raise CaptureFailed(f"{type(e).__name__}: {e}") from e
    torch.cuda.current_stream(device).wait_stream(stream)

    def replay():
        with torch.cuda.device(device):
            graph.replay()
        return captured

    return first, replay
