# Sourced by scripts/demo and scripts/test: makes a Python with mmcompile and its dependencies.
# With a CUDA torch already installed (a GPU machine), mmcompile is installed into that Python and
# nothing is downloaded. Otherwise a .venv gets the CPU build of torch 2.13.0 (never an unpinned
# torch: that pulls a multi-GB CUDA build) and triton 3.7.1, whose interpreter runs the kernels.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    PYTHON=python3
    $PYTHON -m pip install -q --no-deps --no-build-isolation -e .
else
    [ -x .venv/bin/python ] || python3 -m venv .venv
    PYTHON=.venv/bin/python
    # --no-compile: no bytecode for all of torch up front (25 s); Python compiles what it imports.
    pip_q() { $PYTHON -m pip install -q --no-compile --disable-pip-version-check "$@"; }
    if ! $PYTHON -c "import torch, sys; sys.exit(0 if torch.__version__ == '2.13.0+cpu' else 1)" 2>/dev/null; then
        # The +cpu build: from a local wheel folder if pip has one, else PyTorch's CPU index.
        pip_q "torch==2.13.0+cpu" || pip_q "torch==2.13.0+cpu" --index-url https://download.pytorch.org/whl/cpu
    fi
    pip_q triton==3.7.1 transformers==5.23.0 numpy networkx sympy pillow pytest pytest-xdist==3.8.0
    pip_q --no-deps -e .
    $PYTHON -c "import torch, triton; assert torch.__version__ == '2.13.0+cpu', torch.__version__"
fi
# Bytecode is written (an environment may forbid it): each test process (two workers, the fresh-process
# tests) then reuses what the first compiled of torch and transformers instead of compiling it again.
unset PYTHONDONTWRITEBYTECODE
export HF_HUB_OFFLINE=1
