"""The ``mminference`` command: ``mminference demo|dump|search|plan|export [options]``."""

from __future__ import annotations

import os
import sys

import torch

COMMANDS = {"demo": "run the built-in demo (no downloads)",
            "dump": "pictures of the per-head sparse masks the default policy picks on planted inputs",
            "search": "per-head pattern search: writes a plan file (mminference search --help)",
            "plan": "mminference plan show PLAN.json [--picture map.png]: what a plan holds",
            "export": "export a language model's prefill with sparse attention to a .pt2 (AOTInductor)"}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print("usage: mminference {%s} [options]" % ",".join(COMMANDS))
        for name, text in COMMANDS.items():
            print(f"  {name:8s} {text}")
        raise SystemExit(2)
    if not torch.cuda.is_available():
        # Kernels run in Triton's CPU interpreter; it must be chosen before any kernel is defined.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if argv[0] == "export":
        from mmcompile.export import cli

        cli.main(argv[1:])
        return
    if argv[0] == "dump":
        from mmcompile import dump

        dump.main(argv[1:])
        return
    if argv[0] in ("search", "plan"):
        from mmcompile.search import cli as search_cli

        if argv[0] == "search":
            search_cli.main(argv[1:])
        elif argv[1:2] == ["show"]:
            search_cli.show(argv[2:])
        else:
            print("usage: mminference plan show PLAN.json [--picture map.png]")
            raise SystemExit(2)
        return
    from mmcompile import demo

    demo.main(argv[1:])


if __name__ == "__main__":
    main()
