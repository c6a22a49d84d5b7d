"""``mminference export``: export a language model's prefill with sparse attention to a ``.pt2``.

    mminference export --out prefill.pt2 [--model tiny|standard|PATH] [--layers 4] [--dtype bf16]
                       [--option min_sparse_len=32768 --option plan=plan.json ...] [--program]

``--model`` is a preset with random weights (``presets.py``) or a local transformers checkpoint
(a VLM or a causal LM: its language model is exported). The default output is an AOTInductor package
(``--program``: a ``torch.export`` program instead, no C++ build). Either loads with
``mmcompile.export.load_package`` / ``load_program`` in a process that imports mmcompile.
"""

from __future__ import annotations

import argparse
import ast
import time

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _option(text: str) -> tuple:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--option takes key=value, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value  # a string (a path, a policy name)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mminference export", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="the .pt2 to write")
    p.add_argument("--model", default="tiny", help="preset (tiny, standard) or a local checkpoint directory")
    p.add_argument("--layers", type=int, default=4, help="decoder layers of a preset")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--example-len", type=int, default=1024, help="example length traced (any length runs)")
    p.add_argument("--min-len", type=int, default=16)
    p.add_argument("--max-len", type=int, default=None, help="longest prefill the export accepts (default 1M)")
    p.add_argument("--option", type=_option, action="append", default=[],
                   help="a backend option, key=value (repeatable), e.g. min_sparse_len=32768")
    p.add_argument("--program", action="store_true", help="write a torch.export program, not an AOTI package")
    return p


def _model(args, dtype):
    from .presets import PRESETS, language_model

    if args.model in PRESETS:
        return language_model(args.model, args.layers, dtype, args.device)
    import transformers

    model = transformers.AutoModel.from_pretrained(args.model, dtype=dtype, attn_implementation="sdpa",
                                                   local_files_only=True)
    return model.to(args.device).eval()


def _positions(decoder, n: int, device):
    """M-RoPE decoders (Qwen2-VL family) take [3, B, N] positions; others compute their own."""
    rope = getattr(decoder.config, "rope_parameters", None) or getattr(decoder.config, "rope_scaling", None) or {}
    if "mrope_section" not in rope:
        return None
    return torch.arange(n, device=device)[None, None].expand(3, 1, n)


def main(argv=None) -> None:
    from . import export_prefill, package, save_program
    from .program import MAX_LEN

    args = _parser().parse_args(argv)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    model = _model(args, dtype)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    n = args.example_len
    embeds = torch.zeros(1, n, decoder.config.hidden_size, dtype=dtype, device=args.device)
    ids = torch.zeros(1, n, dtype=torch.int32, device=args.device)  # values do not matter for tracing
    start = time.perf_counter()
    exported = export_prefill(model, embeds, ids, position_ids=_positions(decoder, n, args.device),
                              options=dict(args.option), min_len=args.min_len, max_len=args.max_len or MAX_LEN)
    print(exported.report.table())
    print(f"exported in {time.perf_counter() - start:.1f} s; inputs {exported.signature.names}")
    start = time.perf_counter()
    if args.program:
        save_program(exported, args.out)
        how = "mmcompile.export.load_program"
    else:
        package(exported, args.out)
        how = "mmcompile.export.load_package"
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s; load it with {how}({args.out!r}) "
          "(the loading process needs mmcompile: the package calls torch.ops.mminference.prefill_attention)")
