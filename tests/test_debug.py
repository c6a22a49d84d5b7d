"""Mask pictures and the ``mminference dump`` command."""

import struct
import zlib

import torch

from mmcompile.debug import COLUMN, DIAGONAL, LISTED, block_map, png_bytes
from mmcompile.kernels import SparseIndex


def decode_gray_png(data: bytes) -> torch.Tensor:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    at = data.index(b"IDAT")
    raw = zlib.decompress(data[at + 4:at + 4 + struct.unpack(">I", data[at - 4:at])[0]])
    rows = [list(raw[r * (width + 1) + 1:(r + 1) * (width + 1)]) for r in range(height)]
    assert all(raw[r * (width + 1)] == 0 for r in range(height))  # filter byte "none"
    return torch.tensor(rows, dtype=torch.uint8)


def test_block_map_marks_listed_diagonal_and_column_blocks():
    # 3 query blocks of 64, key blocks of 32: block 2 lists key block 0 and column 40 (key block 1).
    z = torch.zeros(1, 1, 3, dtype=torch.int32)
    count, cols = z.clone(), z.clone()
    count[0, 0, 2], cols[0, 0, 2] = 1, 1
    offsets = torch.zeros(1, 1, 3, 1, dtype=torch.int32)
    col_index = torch.full((1, 1, 3, 1), 40, dtype=torch.int32)
    picture = block_map(SparseIndex(count, offsets, cols, col_index, 64, 32), 192, 0)
    expected = torch.zeros(3, 6, dtype=torch.uint8)
    for m in range(3):
        expected[m, 2 * m:2 * m + 2] = DIAGONAL
    expected[2, 0], expected[2, 1] = LISTED, COLUMN
    assert torch.equal(picture, expected)
    assert torch.equal(decode_gray_png(png_bytes(picture)), picture)


def test_png_is_max_pooled_to_the_size_limit():
    big = torch.zeros(300, 700, dtype=torch.uint8)
    big[123, 456] = 255
    small = decode_gray_png(png_bytes(big, max_side=100))
    assert small.shape == (43, 100) and small.max() == 255  # ceil(700 / 100) = 7x7 pooling


def test_dump_command_writes_pictures_and_table(tmp_path):
    from mmcompile.dump import dump

    lines = dump(2048, "mixed", "4/2", 0.2, str(tmp_path))
    assert lines[0].startswith("# mixed layout") and len(lines) == 4 + 4
    written = sorted(p.name for p in tmp_path.iterdir())
    assert "patterns.md" in written
    firsts = sorted(tmp_path.glob("layer_head??.png"))
    assert firsts and all(decode_gray_png(p.read_bytes()).shape[0] == -(-2048 // 128) for p in firsts)
    for p in set(tmp_path.glob("*.png")) - set(firsts):  # a head's later launch (a grid after its band
        assert p.with_name(p.name[:-6] + ".png") in firsts  # or the rows of one modality): its own rows
        assert 0 < decode_gray_png(p.read_bytes()).shape[0] <= -(-2048 // 128)


def test_readme_demo_model_part_runs():
    """The model part of ``scripts/demo`` (the README's demo command): a checkpoint folder, generate()."""
    import mmcompile.report as report
    from mmcompile import demo_model
    from mmcompile.runtime import DenseReason

    demo_model.run()
    records = report.last_report().runtime()["records"]  # the last run: the A-shape budget
    sparse = [r for r in records if r.path == "sparse"]
    assert [(r.reason, r.detail) for r in sparse] == [(None, "a-shape")] * 2 and all(r.density < 1 for r in sparse)
    assert {r.reason for r in records if r.path == "dense"} == {DenseReason.DECODE_OR_CHUNK}
    assert sparse[0].layout.geometry == f"{demo_model.FRAMES} images of 16 tokens"
