#!/usr/bin/env python
"""Run Hugging Face's own modeling tests of a few models in mmcompile's modes; print the failures that are ours.

    .venv/bin/python scripts/hf_modeling/run.py --transformers /tmp/transformers-src \
        --models qwen2_5_vl llama --modes plain attention backend eager-control [-k EXPR] [--jobs 2]

--transformers is a transformers source checkout (or its tests/ folder, or an unpacked sdist). Nothing is
fetched. The tests are staged into --workdir (the given tree is never written to):
  * tests/*.py, tests/{generation,exporters,utils}/ are copied from the given tree; a module the common
    suite imports but the tree lacks is filled from shim/tests/ (the PyPI sdist has tests/*.py only: then
    tests/generation/test_utils.py is an EMPTY GenerationTesterMixin, i.e. no generate tests);
  * tests/models/<name>/test_modeling_<name>.py is the tree's own when present, else the substitute in
    testers/ (flagged "SUBSTITUTE" in the table): HF's common ModelTesterMixin suite with a tiny tester.
One pytest subprocess per (model, mode), with plugin.py selecting the mode (MMC_HF_MODE), results from
its junit xml. "Ours" = failed/errored in a mode, passed or skipped in its control
(attention*: plain; backend*: eager-control).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
MODELS = ["qwen2_vl", "qwen2_5_vl", "llava_onevision", "llava_next_video", "qwen2", "llama"]
MODES = ["plain", "attention", "attention-sdpa", "backend", "backend-dense", "eager-control"]
CONTROL = {"attention": "plain", "attention-sdpa": "plain", "backend": "eager-control",
           "backend-dense": "eager-control"}
SUBDIRS = ("generation", "exporters", "utils")


def tests_root(path: Path) -> Path:
    for candidate in (path / "tests", path):
        if (candidate / "test_modeling_common.py").is_file():
            return candidate
    sys.exit(f"{path}: no tests/test_modeling_common.py there (nor in {path}/tests)")


def stage(src: Path, work: Path, models: list[str]) -> dict[str, str]:
    """Copy what the tests need into work/tests; returns {model: 'hf' | 'SUBSTITUTE' | 'missing'}."""
    dst = work / "tests"
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for f in src.glob("*.py"):
        shutil.copy2(f, dst / f.name)
    for sub in SUBDIRS:
        if (src / sub).is_dir():
            shutil.copytree(src / sub, dst / sub, ignore=shutil.ignore_patterns("__pycache__"))
    shim = HERE / "shim" / "tests"
    for f in shim.rglob("*.py"):
        target = dst / f.relative_to(shim)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
    (dst / "models").mkdir(exist_ok=True)
    (dst / "models" / "__init__.py").touch()
    shutil.copy2(HERE / "testers" / "_causal_lm.py", dst / "models" / "_causal_lm.py")
    origin = {}
    for m in models:
        (dst / "models" / m).mkdir(exist_ok=True)
        (dst / "models" / m / "__init__.py").touch()
        own = src / "models" / m / f"test_modeling_{m}.py"
        sub = HERE / "testers" / f"test_modeling_{m}.py"
        if own.is_file():
            shutil.copy2(own, dst / "models" / m / own.name)
            origin[m] = "hf"
        elif sub.is_file():
            shutil.copy2(sub, dst / "models" / m / sub.name)
            origin[m] = "SUBSTITUTE"
        else:
            origin[m] = "missing"
    (work / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow\n    flash_attn_test\n"
                                     "    generate\n    torch_compile_test\n    torch_export_test\n"
                                     "    flash_attn_3_test\n    all_flash_attn_test\n    training_ci\n"
                                     "    tensor_parallel_ci\n    is_flaky\n"
                                     "filterwarnings =\n    ignore::pytest.PytestUnknownMarkWarning\n")
    return origin


def run_one(work: Path, model: str, mode: str, args, threads: int) -> tuple[str, str, float, int]:
    xml = work / "results" / f"{model}.{mode}.xml"
    log = work / "results" / f"{model}.{mode}.log"
    xml.parent.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", f"tests/models/{model}/test_modeling_{model}.py", "-p", "plugin",
           "-p", "no:cacheprovider", "-q", "-rN", f"--junitxml={xml}", "-o", "junit_family=xunit1",
           f"--timeout={args.timeout}"]
    if args.k:
        cmd += ["-k", args.k]
    env = dict(os.environ, MMC_HF_MODE=mode, TRITON_INTERPRET="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS=str(threads), MMC_HF_ROOT=str(args.mmcompile_root),
               MMC_HF_GENERATE_COMPILE="mode",
               PYTHONPATH=os.pathsep.join([str(HERE), str(args.mmcompile_root), os.environ.get("PYTHONPATH", "")]))
    start = time.time()
    with open(log, "w") as out:
        rc = subprocess.call(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
    return model, mode, time.time() - start, rc


def parse(xml: Path) -> dict[str, dict]:
    """{test id: {"status": passed|failed|skipped, "message": first line, "props": {...}}}"""
    results = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        tid = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        status, message = "passed", ""
        for tag in ("failure", "error"):
            el = case.find(tag)
            if el is not None:
                status = "failed"
                text = (el.get("message") or el.text or "").strip()
                message = text.splitlines()[0][:240] if text else tag
                break
        else:
            el = case.find("skipped")
            if el is not None:
                status, message = "skipped", (el.get("message") or "").splitlines()[0][:160] if el.get("message") else ""
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        if tid in results and results[tid]["status"] == "failed":  # teardown error after a failure
            continue
        results[tid] = {"status": status, "message": message, "props": props}
    return results


def report(work: Path, models: list[str], modes: list[str], origin: dict, times: dict) -> dict:
    data = {}
    for m in models:
        for mode in modes:
            xml = work / "results" / f"{m}.{mode}.xml"
            data[(m, mode)] = parse(xml) if xml.is_file() else None
    print("\n== counts (passed / failed / skipped) ==")
    print(f"{'model':<18}{'tests':<12}{'mode':<16}{'pass':>6}{'fail':>6}{'skip':>6}{'secs':>8}  extra")
    for m in models:
        for mode in modes:
            res = data[(m, mode)]
            if res is None:
                print(f"{m:<18}{origin.get(m, '?'):<12}{mode:<16}  (no junit xml: see results/{m}.{mode}.log)")
                continue
            c = {s: sum(1 for r in res.values() if r["status"] == s) for s in ("passed", "failed", "skipped")}
            extra = ""
            if mode.startswith("attention"):
                calls = [int(r["props"].get("mmc_attn_calls", 0)) for r in res.values()]
                fb = sum(int(r["props"].get("mmc_attn_fallback", 0)) for r in res.values())
                extra = f"tests calling ours: {sum(1 for x in calls if x)}, calls {sum(calls)} ({fb} to SDPA)"
            elif mode in ("backend", "backend-dense"):
                g = sum(int(r["props"].get("mmc_graphs", 0)) for r in res.values())
                rw = sum(int(r["props"].get("mmc_rewritten", 0)) for r in res.values())
                extra = f"graphs {g}, sites rewritten {rw}"
            print(f"{m:<18}{origin.get(m, '?'):<12}{mode:<16}{c['passed']:>6}{c['failed']:>6}{c['skipped']:>6}"
                  f"{times.get((m, mode), 0):>8.0f}  {extra}")
    ours = []
    print("\n== failures that are ours (fail in the mode, pass or skip in its control) ==")
    for m in models:
        for mode in modes:
            control = CONTROL.get(mode)
            res = data[(m, mode)]
            if control is None or res is None:
                continue
            ctrl = data.get((m, control))
            for tid, r in sorted(res.items()):
                if r["status"] != "failed":
                    continue
                c = None if ctrl is None else ctrl.get(tid)
                if c is not None and c["status"] == "failed":
                    continue
                note = "" if c is not None else f"  [control {control} not run]"
                ours.append({"model": m, "mode": mode, "test": tid, "error": r["message"], "control": control})
                print(f"{m} [{mode}] {tid}{note}\n    {r['message']}")
    if not ours:
        print("(none)")
    for m in models:  # what torch.compile itself breaks, for context
        ctrl, plain = data.get((m, "eager-control")), data.get((m, "plain"))
        if ctrl and plain:
            n = [t for t, r in ctrl.items() if r["status"] == "failed" and plain.get(t, {}).get("status") != "failed"]
            if n:
                print(f"\n(note) {m}: {len(n)} tests fail under eager-control but not plain (plain torch.compile): "
                      + ", ".join(sorted(n)[:12]) + (" ..." if len(n) > 12 else ""))
    summary = {"ours": ours, "origin": origin,
               "counts": {f"{m}/{mode}": None if r is None else
                          {s: sum(1 for x in r.values() if x["status"] == s) for s in ("passed", "failed", "skipped")}
                          for (m, mode), r in data.items()}}
    (work / "results" / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\nresults: {work}/results (junit xml, logs, summary.json)")
    return summary


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transformers", required=True, type=Path, help="transformers checkout or its tests/ folder")
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument("--modes", nargs="+", default=["plain", "attention", "backend", "eager-control"], choices=MODES)
    p.add_argument("-k", default=None, help="pytest -k expression")
    p.add_argument("--jobs", type=int, default=1, help="pytest subprocesses at once")
    p.add_argument("--timeout", type=int, default=600, help="per-test timeout (s, pytest-timeout)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/mmc-hf-modeling"))
    p.add_argument("--mmcompile-root", type=Path, default=REPO,
                   help="folder whose mmcompile/ package is imported (default: this checkout); e.g. a "
                        "`git archive HEAD | tar -x -C DIR` snapshot, to test a fixed revision while the tree changes")
    p.add_argument("--report-only", action="store_true", help="re-print from the workdir's existing results")
    args = p.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    src = tests_root(args.transformers.resolve())
    origin_file = work / "origin.json"
    times: dict = {}
    if args.report_only:
        origin = json.loads(origin_file.read_text()) if origin_file.is_file() else {}
    else:
        origin = stage(src, work, args.models)
        old = json.loads(origin_file.read_text()) if origin_file.is_file() else {}
        origin_file.write_text(json.dumps({**old, **origin}))
        print("tests:", ", ".join(f"{m}={o}" for m, o in origin.items()), f"(from {src})", flush=True)
        jobs = [(m, mode) for m in args.models if origin[m] != "missing" for mode in args.modes]
        threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for m, mode, secs, rc in pool.map(lambda j: run_one(work, j[0], j[1], args, threads), jobs):
                times[(m, mode)] = secs
                print(f"  ran {m} [{mode}]: rc={rc}, {secs:.0f}s", flush=True)
    report(work, args.models, args.modes, origin, times)


if __name__ == "__main__":
    main()
