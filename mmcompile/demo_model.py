"""The model part of the demo, the way a user runs a downloaded checkpoint: a tiny LLaVA and its
processor saved to a folder (``tiny_checkpoint.py``: random weights, a tokenizer built locally,
nothing downloaded), loaded with ``AutoProcessor`` / ``AutoModelForImageTextToText``, synthetic
frames and a question through the processor, then ``model.compile(backend="mminference")`` and
``model.generate(...)``.

It checks the forced-dense tokens against eager, then runs the sparse prefill (the layout, frame
geometry included, reaches the language model on its own) and prints the rewrite's summary and what
each layer did. On a CPU the rewritten graph runs uncompiled (``debug_uncompiled``: no C++ compile in
a demo); on a GPU it goes through Inductor.
"""

from __future__ import annotations

import tempfile

import torch

FRAMES, NEW_TOKENS = 16, 4
QUESTION = "what moves in the video"


def run() -> None:
    import mmcompile.report as report
    from mmcompile import tiny_checkpoint as tiny
    from mmcompile.patterns import Dense

    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as folder:
        tiny.save_tiny_llava(folder)
        processor, model = tiny.load(folder)
    inputs = processor(images=tiny.synthetic_frames(FRAMES), text=tiny.prompt(FRAMES, QUESTION), return_tensors="pt")
    if cuda:
        model, inputs = model.cuda(), inputs.to("cuda")
    image_tokens = int((inputs["input_ids"] == model.config.image_token_index).sum())
    print(f"\nLLaVA (tiny, random weights) from a checkpoint folder: {inputs['input_ids'].shape[1]} prompt tokens, "
          f"{image_tokens} of them {FRAMES} frames; generate({NEW_TOKENS} new tokens)")
    with torch.no_grad():
        eager = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    base = {} if cuda else {"debug_uncompiled": True}
    runs = (("forced dense", dict(force_dense=True)),
            # Random weights have no attention structure: the online policy rightly keeps heads dense
            # (no sparse index keeps 95% of their mass). The fixed A-shape budget shows the sparse path.
            ("online policy", dict(min_sparse_len=256, density=0.3)),
            ("A-shape budget", dict(min_sparse_len=256, policy="a-shape", sink=64, local=64)))
    for name, options in runs:
        torch._dynamo.reset()
        rep = report.reset_report()
        model.compile(backend="mminference", options=dict(base, **options))
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        print(f"\n{name} {options}: {rep.summary()}")
        print(f"  tokens {'equal' if torch.equal(out, eager) else 'differ from'} eager: "
              f"{processor.decode(out[0, -NEW_TOKENS:])!r}")
        for record in rep.runtime()["records"]:
            if record.path != "sparse":
                continue
            dense_heads = sum(all(p == Dense() for _, p in head.intra) for head in record.patterns)
            predicted = "" if record.predicted_recall is None else \
                f", predicted recall >= {record.predicted_recall:.3f}"
            print(f"  layer {record.layer}: sparse ({record.detail}), {record.n_q} tokens, density "
                  f"{record.density:.2f}, {dense_heads}/{len(record.patterns)} heads dense{predicted}")
        dense = rep.runtime()["reasons"]
        print("  dense calls: " + (", ".join(f"{n} x {reason.value}" for reason, n in dense.items()) or "none"))
    layout = next(r.layout for r in rep.runtime()["records"] if r.path == "sparse")
    print(f"  layout: {layout.source}; frame geometry: {layout.geometry}; tokens {layout.tokens}")
