"""Grid against VS on planted grid heads (benchmarks/grid_vs_vs.py): with periodic same-patch
attention, Grid's permutation reaches the recall target at a fraction of any VS size's density;
without it, VS columns cover the lines as cheaply. The periodic option is off by default and then
leaves ``planted_qkv`` unchanged."""

import os
import sys

import pytest
import torch

from mmcompile.patterns.planted import planted_qkv, standard_layout

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from grid_vs_vs import cheapest, ladders, setup, sweep  # noqa: E402

TARGET = 0.9
# 8192 tokens: 29 frames of 16 x 16, residue classes of 32 slots.
LADDER = ladders(64, grid_blocks=(0, 1, 2), vs_columns=(128, 512), vs_blocks=(2, 4, 8, 16, 32, 64, 128))


def least_density(frames: float) -> dict:
    """Per family: the largest over the planted grid heads of the least density reaching TARGET
    (inf if some head never does)."""
    s = setup(8192, 4, 1, 64, "cpu", torch.float32, (64, 64), frames=frames, rows=128)
    out = {}
    for family, res in sweep(s, kernel=False, families=LADDER).items():
        best = cheapest(res, TARGET)
        out[family] = max(float("inf") if i is None else res[i][1]["density"][h].item() for h, i in enumerate(best))
    return out


def test_grid_beats_every_vs_size_on_periodic_heads():
    density = least_density(frames=16.0)
    assert density["Grid"] < 0.06, density
    assert 3 * density["Grid"] < density["VS"] < float("inf"), density  # VS: a key block per earlier frame


def test_without_periodic_slashes_vs_is_as_cheap():
    density = least_density(frames=0.0)
    assert density["VS"] < 2 * density["Grid"], density  # only lines and sinks: columns suffice


def test_periodic_off_leaves_planted_unchanged():
    layout = standard_layout("video", 2048)
    default = planted_qkv(layout, 8, 2, 64, seed=1)
    off = planted_qkv(layout, 8, 2, 64, seed=1, periodic_frames=0)
    on = planted_qkv(layout, 8, 2, 64, seed=1, periodic_frames=16)
    assert default[3] == off[3] == on[3]
    for a, b in zip(default[:3], off[:3]):
        assert torch.equal(a, b)
    assert not torch.equal(default[0], on[0])
    # q, k, v sums of squares of the default output as recorded before the option existed (90ad07c).
    fingerprint = [(t.double() ** 2).sum().item() for t in default[:3]]
    assert fingerprint == pytest.approx([3405797.3012217274, 367429.66367704706, 262081.24634255713], rel=1e-5)
