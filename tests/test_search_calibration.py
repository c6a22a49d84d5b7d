"""``mminference search --source model`` on a checkpoint folder with a processor: the calibration
inputs come from the processor (synthetic images for LLaVA, video frames for Qwen2.5-VL), the whole
VLM runs on them, and the search's layout is read off them; without a processor (``tiny``, a
config-only folder) the random-embeddings path runs, and the plan's calibration record says which."""

import json
import os
import shutil

import pytest
import torch

from mmcompile import tiny_checkpoint as tiny
from mmcompile.patterns.layout import IMAGE, TEXT, VIDEO
from mmcompile.plans import load_plan
from mmcompile.search.calibration import processor_calibration, synthetic_frames

pytest.importorskip("PIL", reason="the LLaVA image processor's PIL backend needs pillow")

TOKENS, ROWS = 1024, 64
IMAGE_TOKENS = 16  # 56 x 56 pixels, 14-pixel patches, CLIP's class token dropped


@pytest.fixture(scope="module")
def llava_folder(tmp_path_factory):
    return tiny.save_tiny_llava(str(tmp_path_factory.mktemp("tiny_llava")))


def _search(folder, out, tokens=TOKENS):
    from mmcompile.cli import main

    main(["search", folder, "--source", "model", "--tokens", str(tokens), "--rows", str(ROWS), "--out", str(out)])
    return load_plan(out), json.loads(out.read_text())["calibration"][0]


def test_synthetic_frames_are_deterministic_moving_structure_not_noise():
    frames = synthetic_frames(8, 40, 56, seed=1)
    assert len(frames) == 8 and frames[0].shape == (40, 56, 3) and frames[0].dtype.name == "uint8"
    assert all((a == b).all() for a, b in zip(frames, synthetic_frames(8, 40, 56, seed=1)))
    assert not (frames[0] == synthetic_frames(8, 40, 56, seed=2)[0]).all()
    moved = frames[0].astype(int) - frames[1].astype(int)
    assert 0 < (moved != 0).any(-1).mean() < 0.2  # the square moved; the background stayed
    rows = frames[0].astype(int)
    assert abs(rows[:, 1:] - rows[:, :-1]).mean() < 8  # smooth: neighbours close, unlike noise


def test_llava_calibration_inputs_come_from_its_processor(llava_folder):
    calibration, why_not = processor_calibration(llava_folder, TOKENS, seed=0)
    assert calibration is not None and why_not == ""
    inputs, layout = calibration.inputs, calibration.layout
    ids = inputs["input_ids"]
    images = inputs["pixel_values"].shape[0]
    assert tuple(inputs["pixel_values"].shape[1:]) == (3, tiny.IMAGE_SIZE, tiny.IMAGE_SIZE)
    assert TOKENS - IMAGE_TOKENS < ids.shape[1] <= TOKENS  # as many images as fit in --tokens
    image_token = json.load(open(os.path.join(llava_folder, "config.json")))["image_token_index"]
    assert int((ids == image_token).sum()) == images * IMAGE_TOKENS
    assert torch.equal(layout.modality == IMAGE, ids == image_token)
    assert torch.equal(layout.modality == TEXT, ids != image_token)
    segment = int(layout.seg_len[0].argmax())
    assert (int(layout.frame_h[0, segment]), int(layout.frame_w[0, segment])) == (4, 4)  # an image is a frame
    assert calibration.description.startswith(f"processor ({images} images of 56x56")


def test_search_over_the_llava_folder_runs_the_whole_vlm_on_its_processor_inputs(llava_folder, tmp_path):
    """The plan equals a search captured by hand from ``model(**inputs)`` (vision tower included;
    without the images the embeddings, hence every score, would differ), its layout has image rows,
    and the record names the processor path."""
    from mmcompile.plans import ModelShape
    from mmcompile.search.capture import capturing
    from mmcompile.search.run import PlanBuilder

    plan, record = _search(llava_folder, tmp_path / "plan.json")
    calibration, _ = processor_calibration(llava_folder, TOKENS, seed=0)
    assert record["inputs"] == calibration.description and record["inputs"].startswith("processor (")
    assert record["tokens"] == calibration.inputs["input_ids"].shape[1] and record["layout"] == "from the inputs"
    assert sorted(plan.layers) == [0, 1] and all(len(heads) == 4 for heads in plan.layers.values())
    assert all(set(plan.scores[(layer, h)]) == {"text", "image"} for layer in (0, 1) for h in range(4))

    _, model = tiny.load(llava_folder)
    builder = PlanBuilder(ModelShape.of_config(model.config), calibration.layout, 0.95, ROWS, 0, block=(64, 64))
    with torch.no_grad(), capturing(model, builder.on_layer):
        model(**calibration.inputs, use_cache=False)
    assert sorted(builder.layers) == [0, 1]  # the vision tower's attention is not captured
    for key, scores in builder.scores.items():
        for rows, by_candidate in scores.items():
            for name, entry in by_candidate.items():
                assert plan.scores[key][rows][name] == pytest.approx(entry, abs=1e-4), (key, rows, name)


def test_a_processor_with_a_chat_template_gets_its_prompt_from_it(llava_folder, tmp_path):
    """A downloaded checkpoint's processor has a chat template: the prompt is the model's own
    (here "it is <image> ... question a", words the tiny tokenizer knows), the images still sized to fit."""
    folder = tmp_path / "templated"
    shutil.copytree(llava_folder, folder)
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}it is {% for c in m['content'] %}{% if c['type'] == 'image' %}<image> "
        "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %} a{% endif %}")
    calibration, why_not = processor_calibration(str(folder), TOKENS)
    assert calibration is not None, why_not
    ids = calibration.inputs["input_ids"][0]
    words = tiny.local_tokenizer([tiny.IMAGE_TOKEN]).decode(torch.cat([ids[:2], ids[-10:]]))
    assert words == "it is what moves in the video where does it go a"
    assert calibration.inputs["pixel_values"].shape[0] == (TOKENS - 12) // IMAGE_TOKENS


def test_without_a_processor_the_search_keeps_random_embeddings_and_says_so(llava_folder, tmp_path):
    assert processor_calibration("tiny", TOKENS) == (None, "not a checkpoint folder")
    config_only = tmp_path / "config_only"
    config_only.mkdir()
    shutil.copy(os.path.join(llava_folder, "config.json"), config_only)
    calibration, why_not = processor_calibration(str(config_only), TOKENS)
    assert calibration is None and why_not.startswith("no processor loads")
    plan, record = _search(str(config_only), tmp_path / "plan.json")
    assert record["inputs"] == f"random embeddings ({why_not})" and record["layout"] == "video"
    assert record["tokens"] == TOKENS and sorted(plan.layers) == [0, 1]
    assert set(plan.scores[(1, 3)]) == {"text", "video"}  # the annotated --layout, not the processor's


def test_a_text_only_processor_keeps_random_embeddings(tmp_path):
    tiny.local_tokenizer([]).save_pretrained(tmp_path)
    calibration, why_not = processor_calibration(str(tmp_path), TOKENS)
    assert calibration is None and why_not.endswith("takes no images or video"), why_not


# --- Qwen2.5-VL: video frames (its video processor imports torchvision) ------------------------

@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory):
    pytest.importorskip("torchvision", reason="transformers' video processors import torchvision")
    return tiny.save_tiny_qwen2_5_vl(str(tmp_path_factory.mktemp("tiny_qwen2_5_vl")))


def test_the_qwen_folder_gives_video_frames_with_their_grid(qwen_folder, tmp_path):
    calibration, why_not = processor_calibration(qwen_folder, TOKENS, seed=0)
    assert calibration is not None, why_not
    inputs, layout = calibration.inputs, calibration.layout
    video_token = json.load(open(os.path.join(qwen_folder, "config.json")))["video_token_id"]
    ids = inputs["input_ids"]
    grid = inputs["video_grid_thw"].tolist()
    assert len(grid) == 1 and grid[0][1:] == [4, 4]  # 56 x 56 pixels: 4 x 4 patches, 2 x 2 tokens a frame
    patches = grid[0][0]  # temporal patches of 2 frames
    assert int((ids == video_token).sum()) == patches * 4 and TOKENS - 4 < ids.shape[1] <= TOKENS
    assert torch.equal(layout.modality == VIDEO, ids == video_token)
    start = int((ids[0] == video_token).nonzero()[0])
    assert (int(layout.seg_start[0, 0]), int(layout.seg_len[0, 0])) == (start, patches * 4)
    assert (int(layout.frame_h[0, 0]), int(layout.frame_w[0, 0])) == (2, 2)
    assert calibration.description.startswith(f"processor ({2 * patches} frames of 56x56 in one video")

    plan, record = _search(qwen_folder, tmp_path / "plan.json")
    assert record["inputs"] == calibration.description and sorted(plan.layers) == [0, 1]
    assert set(plan.scores[(1, 3)]) == {"text", "video"}
    assert any(name.startswith("grid:") for name in plan.scores[(1, 3)]["video"])  # frame geometry reached it
