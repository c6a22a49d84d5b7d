#!/usr/bin/env bash
# Issue 13 (AOT export), one device call per part (each under 10 min): `test` the export tests (the
# AOTInductor package of a 2-layer bf16 model in a fresh process against the compiled path, then
# the CPU export tests on this stack); `bench` benchmarks/export_aoti.py (the standard-shape 4-layer
# package at 32K, 128K, 256K against torch.compile; ~3-4 min on an H200, AOTInductor build included).
# Output: $OUT/run_$part.txt; `bench` also $OUT/export_aoti.json and $OUT/export_aoti.txt.
set -u
OUT=${OUT:-/tmp/out}
part=${1:-bench}
mkdir -p $OUT
exec > >(tee $OUT/run_$part.txt) 2>&1
source "$(dirname "$0")/gpu_env.sh"
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "install failed"
if [ "$part" = test ]; then
  timeout 540 python3 -m pytest -q -p no:cacheprovider tests/test_export_gpu.py tests/test_export.py \
    tests/test_export_minmax.py 2>&1 | tail -15
else
  /usr/bin/time -f "export_aoti wall %e s" timeout 540 python3 benchmarks/export_aoti.py --out $OUT 2>&1 \
    | grep -v -i warn | tail -40
fi
