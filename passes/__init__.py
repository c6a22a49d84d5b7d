"""FX passes of the ``mminference`` backend (installed as ``mmcompile.passes``).

Passes analyse and rewrite FX graphs and reach the kernels only through ``torch.ops.mminference.*``.
"""
