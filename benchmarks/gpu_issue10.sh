#!/usr/bin/env bash
# One device call for issue 10 (the run-time move): the same benchmarks on the code before the move
# (_baseline/, a `git archive` of the commit before it, untracked) and on this checkout, then the GPU
# tests, then the independent planted families at 128K. Output: $OUT/run.txt (table last) + JSON.
set -u
OUT=${OUT:-/tmp/out}
exec > >(tee $OUT/run.txt) 2>&1
source "$(dirname "$0")/gpu_env.sh"
# Each tree as an importable folder (mmcompile/kernels, mmcompile/passes as the wheel lays them out),
# so both run in this Python without installing either over the other.
tree() {  # tree SRC DEST
  mkdir -p $2 && cp -r $1/mmcompile $2/ && cp -r $1/kernels $2/mmcompile/kernels && cp -r $1/passes $2/mmcompile/passes
}
tree _baseline /tmp/old && tree . /tmp/new
for which in old new; do
  for layout in video mixed; do
    echo "--- op $layout $which"
    PYTHONPATH=/tmp/$which timeout 240 python3 benchmarks/bench_prefill_op.py --layout $layout --out $OUT/op_${layout}_$which.json 2>&1 \
      | grep -v -i warn | tail -2
  done
  script=benchmarks/fidelity.py; [ $which = old ] && script=_baseline/benchmarks/fidelity.py
  echo "--- fidelity video 128K $which"
  PYTHONPATH=/tmp/$which timeout 240 python3 $script --layout video --tokens 131072 --no-flex 2>&1 | grep -v -i warn | tail -12
done
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "install failed"
echo "--- GPU tests"
timeout 300 python3 -m pytest -q -m gpu tests/ -p no:warnings 2>&1 | tail -4
echo "--- families 128K seed 1"
timeout 300 python3 benchmarks/fidelity_families.py --tokens 131072 --seeds 1 --out $OUT/families_128k.json 2>&1 \
  | grep -v -i warn | tail -16
echo "=== table ==="
grep -E "^(video|mixed) 131072|ALL mean|whole op|passed|failed" $OUT/run.txt
