"""The wheel installs the top-level kernels/ and passes/ folders as mmcompile subpackages and
declares the backend entry point (a clean-environment install was checked by hand: BENCHMARKS/notes)."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_layout_and_entry_point(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("mmcompile-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("mmcompile/kernels/sparse_attention_fwd.py", "mmcompile/kernels/reference.py",
                   "mmcompile/passes/__init__.py", "mmcompile/ops/prefill.py", "mmcompile/runtime/prefill.py",
                   "mmcompile/plans/schema.py", "mmcompile/export/program.py",
                   "mmcompile/backend.py",
                   "mmcompile/patterns/policy.py", "mmcompile/distributed/attention.py"):
        assert module in names
    assert not any(n.startswith(("kernels/", "passes/", "tests/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[torch_dynamo_backends]" in text and "mminference = mmcompile.backend:mminference_backend" in text
    assert "[torch.backends]" in text and "mminference_logs = mmcompile.torch_logs:register" in text
