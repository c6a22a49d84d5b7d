"""``dump_dir`` holds, under ``masks/``, one picture per sparse head of each layer of the last
forward (the blocks the kernel visited), next to the per-graph code and report."""

import torch

from mmcompile import report as mm_report
from test_backend_options import LAYERS, qwen2_text
from test_debug import decode_gray_png

OPTIONS = {"debug_uncompiled": True, "min_sparse_len": 16, "policy": "a-shape", "sink": 64, "local": 64}


def test_dump_dir_has_the_mask_pictures_of_the_last_forward(tmp_path):
    mm_report.reset_report()
    model, ids = qwen2_text(seq=300)
    compiled = torch.compile(model, backend="mminference", options=dict(OPTIONS, dump_dir=str(tmp_path)))
    masks = tmp_path / "masks"
    for n, blocks in ((300, (3, 5)), (140, (2, 3))):  # 128 x 64 tiles: query blocks x key blocks
        with torch.no_grad():
            compiled(input_ids=ids[:, :n].clone(memory_format=torch.contiguous_format))
        names = sorted(p.name for p in masks.iterdir())
        assert names == [f"layer{layer:02d}_head{h:02d}.png" for layer in range(LAYERS) for h in range(4)]
        assert {decode_gray_png((masks / name).read_bytes()).shape for name in names} == {blocks}
    assert mm_report.last_report().runtime()["sparse_calls"] == 2 * LAYERS
