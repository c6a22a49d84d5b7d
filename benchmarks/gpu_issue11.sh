#!/usr/bin/env bash
# One device call for issue 11 (first part): the recall target measured on the built index.
# The op and the whole-layer fidelity at 128K with the target (0.95, the default) and without it
# (0: the previous behaviour), then the independent planted families at 128K, seed 1, both ways.
# Output: $OUT/run.txt (table last) + families JSON.
set -u
OUT=${OUT:-/tmp/out}
exec > >(tee $OUT/run.txt) 2>&1
source "$(dirname "$0")/gpu_env.sh"
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "install failed"
for recall in 0.95; do
  for layout in video mixed; do
    timeout 200 python3 benchmarks/bench_prefill_op.py --layout $layout --recall $recall 2>&1 | grep -v -i warn | tail -1
  done
  for layout in video mixed; do
    echo "--- fidelity $layout 128K recall $recall"
    timeout 200 python3 benchmarks/fidelity.py --layout $layout --tokens 131072 --no-flex --recall $recall 2>&1 | grep -v -i warn | tail -11
  done
done
echo "--- families 128K+256K seeds 1,2 recall 0.95"
timeout 400 python3 benchmarks/fidelity_families.py --tokens 131072,262144 --seeds 1,2 --recall 0.95 --out $OUT/families_r0.95.json 2>&1 \
  | grep -v -i warn | tail -15
echo "--- families 512K seed 1 recall 0.95"
timeout 300 python3 benchmarks/fidelity_families.py --tokens 524288 --seeds 1 --recall 0.95 --out $OUT/families_512k_r0.95.json 2>&1 \
  | grep -v -i warn | tail -15
echo "=== table ==="
grep -E "^(video|mixed) 131072|ALL mean|whole op|^layout=" $OUT/run.txt
