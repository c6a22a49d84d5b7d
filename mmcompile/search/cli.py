"""``mminference search`` and ``mminference plan show``.

    mminference search standard --source families --tokens 32768 --layout mixed --out plan.json
    mminference search path/to/checkpoint --tokens 32768 --out plan.json     # q, k, v captured
    mminference plan show plan.json [--picture map.png]

MODEL: ``standard`` (the standard-shape Qwen2.5-VL language model of BENCHMARKING.md), ``tiny``
(a 2-layer Qwen2.5-VL, 4/2 heads), a checkpoint directory or a ``config.json``. Sources of each layer's
q, k, v: ``model`` (a forward of the model; weights from the directory when it has them, else
random: a directory with a processor that takes images or video gives the inputs, synthetic media
and a prompt of about ``--tokens`` tokens through the whole VLM, the layout read off them and
``--layout`` unused (``calibration.py``); otherwise the language model on random embeddings with
the ``--layout`` annotated), ``planted`` (the project's planted generator, one seed per layer) or
``families`` (the independent families, one per layer in turn). The plan's calibration record says
which inputs ran (``inputs``). A progress bar with the time left, then the summary table.
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def main(argv) -> None:
    parser = argparse.ArgumentParser(prog="mminference search", description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--source", default="model", choices=("model", "planted", "families"))
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--layout", default="video", choices=("video", "mixed", "text"))
    parser.add_argument("--recall", type=float, default=0.95)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, default=None, help="search only the first N layers")
    parser.add_argument("--out", default="plan.json")
    args = parser.parse_args(argv)
    plan = run_search(args)
    from mmcompile.plans import save_plan

    from .show import summary_lines
    save_plan(plan, args.out)
    print("\n".join(summary_lines(plan)))
    print(f"calibration inputs: {plan.calibration[0]['inputs']}")
    print(f"wrote {args.out}")


def show(argv) -> None:
    parser = argparse.ArgumentParser(prog="mminference plan show")
    parser.add_argument("plan")
    parser.add_argument("--picture", default=None, help="write the per-head pattern map as a PNG")
    args = parser.parse_args(argv)
    from mmcompile.debug import png_bytes
    from mmcompile.plans import load_plan

    from .show import pattern_map, summary_lines
    plan = load_plan(args.plan)
    print("\n".join(summary_lines(plan)))
    if args.picture:
        with open(args.picture, "wb") as f:
            f.write(png_bytes(pattern_map(plan)))
        print(f"wrote {args.picture} (rows: layers, columns: heads; dark A-shape, grey VS, light Grid, white dense)")


def run_search(args):
    from tqdm import tqdm

    from mmcompile.plans import ModelShape

    from .run import PlanBuilder
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = _config(args.model)
    shape = ModelShape.of_config(config)
    layers = min(shape.layers, args.layers or shape.layers)
    calibration, inputs = None, f"{args.source} q, k, v"
    if args.source == "model":
        from .calibration import processor_calibration
        calibration, why_not = processor_calibration(args.model, args.tokens, args.seed)
        inputs = calibration.description if calibration else f"random embeddings ({why_not})"
    layout = calibration.layout if calibration else _layout(args.layout, args.tokens, args.source, args.seed)
    bar = tqdm(total=layers, desc="search", unit="layer")
    block = (128, 64) if device == "cuda" else (64, 64)
    builder = PlanBuilder(shape, layout, args.recall, args.rows, args.seed, progress=lambda _: bar.update(1),
                          block=block)
    start = time.perf_counter()
    if args.source == "model":
        _search_model(args.model, config, layout, layers, builder, device, calibration)
    else:
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        for layer in range(layers):
            q, k, v = _planted(args.source, layer, layout, shape, device, dtype, args.seed)
            builder.on_layer(layer, q, k, v, shape.head_dim ** -0.5)
            del q, k, v
    bar.close()
    record = dict(source=args.source, tokens=layout.length, layout="from the inputs" if calibration else args.layout,
                  inputs=inputs, seed=args.seed, seconds=round(time.perf_counter() - start, 1))
    return builder.plan([record])


def _config(model: str):
    import transformers as tf

    if model == "standard":
        return tf.Qwen2_5_VLConfig(text_config=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                                    num_attention_heads=28, num_key_value_heads=4))
    if model == "tiny":
        return tf.Qwen2_5_VLConfig(
            text_config=dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
                             rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[4, 6, 6])),
            vision_config=dict(depth=1, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=128))
    return tf.AutoConfig.from_pretrained(os.path.dirname(model) if model.endswith(".json") else model)


def _layout(kind: str, tokens: int, source: str, seed: int):
    if source == "families":
        from mmcompile.patterns.families import family_layout
        return family_layout(kind, tokens, seed)
    from mmcompile.patterns.planted import standard_layout
    return standard_layout(kind, tokens)


def _planted(source, layer, layout, shape, device, dtype, seed):
    if source == "families":
        from mmcompile.patterns.families import FAMILIES, family_qkv
        q, k, v, _ = family_qkv(FAMILIES[layer % len(FAMILIES)], layout, shape.heads_q, shape.heads_kv,
                                shape.head_dim, device, dtype, seed)
        return q, k, v
    from mmcompile.patterns.planted import planted_qkv
    q, k, v, _ = planted_qkv(layout, shape.heads_q, shape.heads_kv, shape.head_dim, device, dtype,
                             seed=seed * 1000 + layer, periodic_frames=16.0)
    return q, k, v


def _search_model(model_arg, config, layout, layers, builder, device, calibration=None):
    """One forward, each layer searched as it runs: of the whole VLM on the processor's inputs
    (``calibration``, whose layout the builder has), else of the language model on random
    embeddings with ``layout`` annotated."""
    import transformers as tf

    from mmcompile.annotate import modality as annotated

    from .capture import capturing
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    text = getattr(config, "text_config", None) or config
    text.num_hidden_layers = layers
    weights = os.path.isdir(model_arg) and any(f.endswith((".safetensors", ".bin")) for f in os.listdir(model_arg))
    with torch.device(device):
        model = (tf.AutoModelForImageTextToText.from_pretrained(model_arg, config=config, dtype=dtype)
                 if weights else tf.AutoModelForImageTextToText.from_config(config, dtype=dtype))
    model.eval()
    if calibration is not None:
        with torch.no_grad(), capturing(model, builder.on_layer):
            model(**calibration.inputs.to(device=device, dtype=dtype), use_cache=False)
        return
    lm = model.model.language_model if hasattr(model.model, "language_model") else model.model
    n = layout.length
    embeds = torch.randn(1, n, text.hidden_size, device=device, dtype=dtype,
                         generator=torch.Generator(device=device).manual_seed(0)) * 0.02
    with torch.no_grad(), capturing(model, builder.on_layer), annotated(layout=layout):
        lm(inputs_embeds=embeds, use_cache=False)
