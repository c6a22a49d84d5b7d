#!/usr/bin/env bash
# Issue 11 on a lent GPU (2026-12-08 session), one device call per part (each under 10 min):
#   map      (~6 min) where the choose and index phases spend GPU time, by function of
#            mmcompile.patterns (op_phases.py --lines --labels: torch 2.11 records no Python frames);
#            the op at 128K (video, mixed); the families at 128K after the held-out rows moved over
#            every row (04385bf): video (seed 2), several videos (seed 1, default rows).
#   ab       OLD=tree (~5 min): the GPU tests of the patterns and the choice graph; the op at 128K on OLD
#            and this tree, alternating, ${2:-2} times (LAYOUTS, default video mixed); op_phases.py --lines --labels; the
#            attend phase launch by launch (attend_launches.py, video).
# Output: $OUT/run_<part>.txt (table last) + JSON.
set -u
part=${1:-map}
source "$(dirname "$0")/gpu_prelude.sh"
source "$(dirname "$0")/gpu_helpers.sh"
if [ "$part" = map ]; then
  timeout 150 python3 benchmarks/op_phases.py --layout video --reps 3 --lines 45 --labels 2>&1 | quiet | cut -c1-170
  for layout in video mixed; do
    timeout 60 python3 benchmarks/bench_prefill_op.py --layout $layout --out $OUT/op_$layout.json 2>&1 | quiet | tail -1
  done
  families_at video 131072 video_s2 --seeds 2
  families_at videos 131072 videos_s1
  echo "=== table ==="
  grep -E "recall target|^layout=|^[a-z0-9-]+ +[0-9]+ +[01]\.[0-9]+" $OUT/run_map.txt | cut -c1-200
elif [ "$part" = ab ]; then
  timeout 100 python3 -m pytest -q -m gpu tests/test_patterns_gpu.py tests/test_choice_graph.py 2>&1 | tail -3
  stage_trees
  op_ab ${2:-2} "${LAYOUTS:-video mixed}"
  timeout 150 python3 benchmarks/op_phases.py --layout video --reps 3 --lines 45 --labels 2>&1 | quiet | cut -c1-170
  timeout 90 python3 benchmarks/attend_launches.py --layout video 2>&1 | quiet | tail -8
  echo "=== table ==="
  grep -E "^(old|new) |passed|failed" $OUT/run_ab.txt | cut -c1-200
fi
