#!/usr/bin/env bash
# Issues 13-15 on the H200, one device call per part (each under 10 min):
#   verify  GPU tests (~5 min: export package, Qwen2.5-VL folder generate, row-subset launch, ...), the
#           generate() check through Inductor, the op at 128K (video, mixed), the index profile at
#           128K and the index memory at 1M;
#   index   after the bounded-memory index (spans, shared column rows): the GPU kernel and patterns
#           tests, the op at 128K, the index profile at 128K and 1M, the mixed families at 128K;
#   export  the AOT export benchmark (standard shape, 4 layers, 32K/128K/256K);
#   long    bench_long.py at LONG_TOKENS (default 1048576): eager (OOM expected), the backend with
#           the KV cache, the dense path on 1 and 2 layers (extrapolation).
# Output: $OUT/run_$part.txt (table last) + JSON.
set -u
part=${1:-verify}
source "$(dirname "$0")/gpu_prelude.sh"
op_and_index() {  # the op at 128K (video, mixed), the index profile at 128K, its memory at 1M
  for layout in video mixed; do
    timeout 60 python3 benchmarks/bench_prefill_op.py --layout $layout --out $OUT/op_$layout.json 2>&1 \
      | grep -v -i warn | tail -1
  done
  echo "--- profile 128K video"
  timeout 60 python3 benchmarks/profile_index.py --tokens 131072 2>&1 | grep -E "^(wall|index|whole)"
  echo "--- index memory 1M"
  timeout 90 python3 benchmarks/profile_index.py --tokens 1048576 2>&1 | grep -E "^(wall|index|whole)"
}
if [ "$part" = verify ]; then
  echo "--- gpu tests"
  timeout 400 python3 -m pytest -q -m gpu tests -p no:cacheprovider 2>&1 | grep -E "passed|failed|FAILED|Error" | tail -6
  echo "--- generate check"
  timeout 100 python3 benchmarks/check_generate_gpu.py 2>&1 | grep -E "^(ok|FAIL|torch)"
  op_and_index
  echo "=== table ==="
  grep -E "passed|failed|^(ok|FAIL)|^(video|mixed).*131072|^wall|peak memory" $OUT/run_verify.txt
elif [ "$part" = index ]; then
  echo "--- gpu kernel and patterns tests (spans, shared column rows)"
  timeout 150 python3 -m pytest -q -m gpu tests/test_kernel_gpu.py tests/test_patterns_gpu.py -p no:cacheprovider 2>&1 \
    | grep -E "passed|failed|FAILED|Error" | tail -6
  op_and_index
  echo "--- families mixed 128K seed 1"
  timeout 120 python3 benchmarks/fidelity_families.py --layout mixed --tokens 131072 --seeds 1 \
    --out $OUT/families_mixed.json 2>&1 | grep -v -i warn | tail -14
  echo "=== table ==="
  grep -E "passed|failed|^(video|mixed).*131072|^wall|peak memory|^layout=|^[a-z0-9-]+ +[0-9]+ +0\.[0-9]+" $OUT/run_index.txt
elif [ "$part" = export ]; then
  /usr/bin/time -f "export_aoti wall %e s" timeout 560 python3 benchmarks/export_aoti.py --out $OUT 2>&1 \
    | grep -v -i warn | tail -30
else
  timeout 560 python3 benchmarks/bench_long.py --tokens ${LONG_TOKENS:-1048576} --out $OUT 2>&1 | grep -v -i warn | tail -12
fi
