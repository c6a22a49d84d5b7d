#!/usr/bin/env bash
# Issue 11, second part, one device call per part (each under 10 min): `a` GPU tests, the op and
# the whole-layer fidelity on the project's planted inputs with and without periodic same-patch
# attention (where Grid is the point), the index profile at 128K and 1M; `b` the independent
# families (mixed 128K seeds 1,2; mixed 256K seed 1; video 128K seed 3); `c` the plan search at the
# standard shape (32K) and that plan applied at 128K; `e2e` time to first token with default options
# on random weights (E2E_TOKENS, default 131072).
# Output: $OUT/run_$part.txt (table last) + JSON.
set -u
part=${1:-a}
source "$(dirname "$0")/gpu_prelude.sh"
if [ "$part" = a ]; then
  echo "--- gpu tests"
  timeout 200 python3 -m pytest -q -m gpu tests -p no:cacheprovider 2>&1 | tail -4
  for pf in 0 16; do
    for layout in video mixed; do
      timeout 120 python3 benchmarks/bench_prefill_op.py --layout $layout --periodic-frames $pf \
        --out $OUT/op_${layout}_pf$pf.json 2>&1 | grep -v -i warn | tail -1
    done
    echo "--- fidelity video 128K periodic $pf"
    timeout 150 python3 benchmarks/fidelity.py --layout video --tokens 131072 --no-flex --periodic-frames $pf 2>&1 \
      | grep -v -i warn | tail -12
  done
  echo "--- profile 128K video"
  timeout 90 python3 benchmarks/profile_index.py --tokens 131072 2>&1 | grep -E "^(part|wall|index|whole|GPU k| *[A-Za-z_]+ +[0-9]+ +[0-9.]+ +[0-9.]+$)" | tail -24
  echo "--- index memory 1M"
  timeout 100 python3 benchmarks/profile_index.py --tokens 1048576 2>&1 | grep -E "^(wall|index|whole)"
  echo "=== table ==="
  grep -E "passed|failed|^(video|mixed).*131072|ALL|whole op|policy|^wall|peak memory" $OUT/run_a.txt
elif [ "$part" = c ]; then
  echo "--- search: standard shape, 28 layers x 28 heads, families, 32K, seed 0"
  /usr/bin/time -f "search wall %e s" timeout 420 python3 -m mmcompile.cli search standard --source families \
    --tokens 32768 --layout mixed --out $OUT/plan_families.json 2>&1 | grep -v -i warn | tail -33
  echo "--- families with that plan, mixed 128K seeds 1,2"
  timeout 150 python3 benchmarks/fidelity_families.py --layout mixed --tokens 131072 --seeds 1,2 \
    --plan $OUT/plan_families.json --out $OUT/families_plan.json 2>&1 | grep -v -i warn | tail -14
  echo "=== table ==="
  grep -E "search wall|^layout=|^[a-z0-9-]+ +[0-9]+ +0\.[0-9]+" $OUT/run_c.txt | head -40
elif [ "$part" = e2e ]; then
  echo "--- TTFT, random weights, default options, 28 layers"
  for n in ${E2E_TOKENS:-131072}; do
    timeout 280 python3 benchmarks/bench_e2e.py --tokens $n --local "" --default-options --no-inductor \
      --no-force-dense --reps 1 --out $OUT/e2e_$n 2>&1 | grep -E "^\{'name'|sparse_calls"
  done
else
  echo "--- families mixed 128K seeds 1,2"
  timeout 200 python3 benchmarks/fidelity_families.py --layout mixed --tokens 131072 --seeds 1,2 \
    --out $OUT/families_mixed.json 2>&1 | grep -v -i warn | tail -14
  echo "--- families mixed 256K seed 1"
  timeout 160 python3 benchmarks/fidelity_families.py --layout mixed --tokens 262144 --seeds 1 \
    --out $OUT/families_mixed_256k.json 2>&1 | grep -v -i warn | tail -14
  echo "--- families video 128K seed 3"
  timeout 120 python3 benchmarks/fidelity_families.py --layout video --tokens 131072 --seeds 3 \
    --out $OUT/families_video.json 2>&1 | grep -v -i warn | tail -14
  echo "=== table ==="
  grep -E "^layout=|^[a-z0-9-]+ +[0-9]+ +0\.[0-9]+" $OUT/run_b.txt | head -40
fi
