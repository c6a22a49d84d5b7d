#!/usr/bin/env bash
# One device call for issue 3: GPU tests of kernel and patterns, then fidelity and timing of the
# whole op on planted inputs (128K video and mixed, with flex on the same mask; 1M with 2 heads),
# where index building spends its time, and grid vs VS at equal recall. Output: $OUT/*.txt
set -u
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "install failed"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
python3 -m pytest -q -x tests/test_patterns_gpu.py tests/test_kernel_gpu.py 2>&1 | tail -3 | tee $OUT/gpu_tests.txt
for layout in video mixed; do
  python3 benchmarks/fidelity.py --layout $layout --tokens 131072 2>&1 | grep -v -i warn | tee $OUT/fidelity_$layout.txt
done
python3 benchmarks/fidelity.py --layout video --tokens 1048576 --heads 2/1 --rows 128 --no-flex 2>&1 | tee $OUT/fidelity_1m.txt
python3 benchmarks/profile_index.py 2>&1 | tail -21 > $OUT/profile_index.txt
python3 benchmarks/profile_index.py --tokens 1048576 2>&1 | tail -21 > $OUT/profile_index_1m.txt
[ -f benchmarks/grid_vs_vs.py ] && python3 benchmarks/grid_vs_vs.py --out $OUT/grid_vs_vs.txt 2>&1 | tail -30
