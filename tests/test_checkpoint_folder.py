"""A checkpoint folder as a user has one: a tiny LLaVA and its processor (tokenizer built locally,
PIL image processor) saved with ``save_pretrained``, loaded with ``AutoProcessor`` /
``AutoModelForImageTextToText``; synthetic frames and a question through the processor, then
``generate()`` through the backend. The layout reaches the op with each frame's geometry."""

import os

import pytest
import torch

from mmcompile import report as mm_report
from mmcompile import tiny_checkpoint as tiny
from mmcompile.runtime import DenseReason, ForwardState, forward_scope
from test_generate import FULL_BUDGET

pytest.importorskip("PIL", reason="the LLaVA image processor's PIL backend needs pillow")

FRAMES, TOKENS_PER_FRAME, LAYERS, NEW_TOKENS = 8, 16, 2, 3
QUESTION = "what moves in the video"


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    folder = tiny.save_tiny_llava(str(tmp_path_factory.mktemp("tiny_llava")))
    processor, model = tiny.load(folder)
    inputs = processor(images=tiny.synthetic_frames(FRAMES), text=tiny.prompt(FRAMES, QUESTION), return_tensors="pt")
    return folder, processor, model, inputs


@pytest.fixture(scope="module")
def generated(loaded):
    folder, _, _, inputs = loaded
    _, model = tiny.load(folder)  # its own model: model.compile changes the module in place
    with torch.no_grad():
        expected = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    torch._dynamo.reset()
    report = mm_report.reset_report()
    with forward_scope(ForwardState()):
        model.compile(backend="mminference", options=FULL_BUDGET)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    torch._dynamo.reset()
    return expected, out, report


def test_the_folder_loads_as_a_downloaded_checkpoint_does(loaded):
    folder, processor, model, inputs = loaded
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= set(os.listdir(folder))
    assert type(processor).__name__ == "LlavaProcessor" and type(model).__name__ == "LlavaForConditionalGeneration"
    assert tuple(inputs["pixel_values"].shape) == (FRAMES, 3, tiny.IMAGE_SIZE, tiny.IMAGE_SIZE)
    image_token = model.config.image_token_index
    assert int((inputs["input_ids"] == image_token).sum()) == FRAMES * TOKENS_PER_FRAME
    assert processor.decode(inputs["input_ids"][0, -5:]) == QUESTION  # no unknown words


def test_generate_from_the_folder_runs_the_sparse_prefill_with_frame_geometry(generated):
    expected, out, report = generated
    assert torch.equal(out, expected)
    runtime = report.runtime()
    assert runtime["sparse_calls"] == LAYERS
    assert runtime["reasons"] == {DenseReason.DECODE_OR_CHUNK: (NEW_TOKENS - 1) * LAYERS}
    layout = runtime["records"][0].layout
    assert all(r.layout == layout for r in runtime["records"] if r.path == "sparse")
    assert layout.source == "input_ids placeholders"
    assert layout.geometry == f"{FRAMES} images of {TOKENS_PER_FRAME} tokens"  # generate's per-image features
    assert layout.segments == ((("image", 0, FRAMES * TOKENS_PER_FRAME, 4, 4),),)
    assert report.summary().endswith("0 left: 100%")



# --- Qwen2.5-VL: a video through the processor (its video processor imports torchvision) -------

QWEN_FRAMES = 8  # 4 temporal patches of 2 x 2 tokens (56 x 56 pixels, 14-pixel patches, merge 2)


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory):
    pytest.importorskip("torchvision", reason="transformers' video processors import torchvision")
    return tiny.save_tiny_qwen2_5_vl(str(tmp_path_factory.mktemp("tiny_qwen2_5_vl")))


def _qwen_inputs(processor):
    return processor(videos=[tiny.synthetic_frames(QWEN_FRAMES)], text=tiny.qwen_video_prompt(QUESTION),
                     return_tensors="pt")


def test_the_qwen_folder_gives_video_tokens_and_grid(qwen_folder):
    processor, model = tiny.load(qwen_folder)
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    inputs = _qwen_inputs(processor)
    assert inputs["video_grid_thw"].tolist() == [[QWEN_FRAMES // 2, 4, 4]]
    assert int((inputs["input_ids"] == model.config.video_token_id).sum()) == QWEN_FRAMES // 2 * 4


@pytest.mark.gpu
def test_generate_from_the_qwen_folder_runs_the_sparse_prefill_with_frame_geometry(qwen_folder):
    """On the GPU: the CPU interpreter of triton 3.6 (the GPU machine's) cannot run the kernel."""
    processor, model = tiny.load(qwen_folder)
    model = model.cuda()
    inputs = _qwen_inputs(processor).to("cuda")
    with torch.no_grad():
        expected = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    torch._dynamo.reset()
    report = mm_report.reset_report()
    with forward_scope(ForwardState()):
        model.compile(backend="mminference", options={**FULL_BUDGET, "debug_uncompiled": False})
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    torch._dynamo.reset()
    assert torch.equal(out, expected)
    runtime = report.runtime()
    assert runtime["sparse_calls"] == LAYERS
    layout = next(r.layout for r in runtime["records"] if r.path == "sparse")
    assert layout.source == "input_ids placeholders"
    start = int((inputs["input_ids"][0] == model.config.video_token_id).nonzero()[0])
    assert layout.segments == ((("video", start, QWEN_FRAMES // 2 * 4, 2, 2),),), layout.geometry
