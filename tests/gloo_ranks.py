"""Run a test's function on every rank of a gloo process group: rank 0 in the test's own process,
the other ranks spawned. One fewer fresh interpreter than ``mp.spawn`` of every rank (on a CPU,
importing torch and transformers is most of a rank's time), and rank 0 works instead of waiting.

A rank that fails makes the call raise: a spawned rank's error comes through ``join``; if rank 0
fails, the spawned ranks are joined briefly and ended, and rank 0's error is raised with theirs
as its cause (a peer that failed first is often the reason). A collective waits at most
``TIMEOUT`` for a rank that is gone."""

import datetime

import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT = datetime.timedelta(seconds=120)


def run_ranks(fn, world: int, tmp: str) -> None:
    """``fn(rank, world, tmp)`` on ranks 0..world-1, each inside ``init_process_group`` (file
    rendezvous in ``tmp``); rank 0 here. ``fn`` must be importable by name (spawned ranks import it)."""
    init = f"file://{tmp}/rendezvous"
    others = mp.start_processes(_spawned, args=(fn, world, tmp, init), nprocs=world - 1, join=False,
                                start_method="spawn")
    try:
        _as_rank(0, fn, world, tmp, init)
    except BaseException as error:
        spawned_error = None
        try:
            others.join(timeout=10)
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
            spawned_error = e
        finally:
            for process in others.processes:
                if process.is_alive():
                    process.terminate()
        raise error from spawned_error
    while not others.join():
        pass


def _spawned(index, fn, world, tmp, init):
    _as_rank(index + 1, fn, world, tmp, init)


def _as_rank(rank, fn, world, tmp, init):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world, timeout=TIMEOUT)
    try:
        fn(rank, world, tmp)
    finally:
        dist.destroy_process_group()
