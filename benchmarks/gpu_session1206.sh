#!/usr/bin/env bash
# Issues 11, 12 and 14 on the H200, one device call per part (each under 10 min):
#   long N   bench_long.py at N tokens (default 1048576): eager (OOM expected at 1M), the backend with
#            the KV cache at a fixed A-shape budget, the dense path on 1 and 2 layers (extrapolation);
#            at 512K eager is timed once (--eager-reps 0) and the dense extrapolation is skipped.
#            LOCAL=keys: the A-shape budget's local window (default 16384; 40960 at 1M is density ~0.08,
#            the online policy's on the video layout's families at 1M).
#   plans    OLD=tree: the op at 128K on that tree and this one, alternating; PLAN=file: the plan
#            applied with online sizes at 128K and 256K (seed 1), the online
#            policy at 256K; the families at 512K and 1M (online, 128 rows).
#   verify   the op at 128K (video, mixed), estimation in 512 MiB head chunks (as is) against 1 GiB
#            (one chunk at 128K), alternating; a plan searched at 32K on the families (seed 0)
#            applied at 128K (seed 1) with online sizes (the online policy's numbers on the same input:
#            results/issue14_h200_index_families_mixed.json); the families at 512K and 1M (128 rows);
#            a profile of the online op at 128K; exactness at 1M on a slice. (No kernel changed: no
#            GPU tests.)
#   planop   the op at 128K (video, video with periodic frames) without and with a plan searched at
#            32K on planted video (seed 1, layer 0; PLAN= to reuse one), twice, alternating.
#   op       OLD=tree: the op at 128K on that tree and this one, alternating (video, mixed).
#   graphs   the GPU test of the captured choice; the op at 128K with the choice replayed from a
#            CUDA graph (default) and eager (MMINFERENCE_CUDA_GRAPHS=0), alternating, twice
#            (video, mixed, video with periodic frames), then with a plan (PLAN= or searched).
#   planvideo  a plan searched on the families at 32K on the video layout (seed 0), applied at 128K
#            (seed 1) with online sizes, and the online policy on the same input.
#   rrcheck  the choice-graph and patterns GPU tests; the families at 128K (mixed, video; seed 1, 128
#            rows) with the exact A-shape/VS predictions.
#   validate OLD=tree: rrcheck, then the op at 128K on that tree and this one, alternating (video, mixed).
#   hostprof GPU tests; bench_estimate.py; op_phases.py on video with the ops of most GPU time and their
#            callers, and on video and mixed with the index phase's host profile (cProfile).
#   fused    OLD=tree: GPU tests (patterns, choice graph, columns); bench_estimate.py; op_phases.py on
#            video with its top kernels; the op at 128K on OLD and this tree, alternating, twice.
#   families256  the families at 256K (mixed, video; seed 2) and 512K (mixed, seed 1), 128 rows; the
#            index phase's host profile at 128K (video).
#   lines    OLD=tree: GPU tests; the families at 256K (video, mixed; seed 2) and 128K (video, seed 1),
#            128 rows; the op at 128K on OLD and this tree, alternating, twice (video, mixed).
#   lines2   the same, short: the families at 256K and 128K (video), the op A/B once.
#   lines3   the mixed layout's families after them: 256K (seed 2), 128K and 512K (seed 1).
#   phases   op_phases.py (video with the top GPU kernels, mixed); OLD=tree: the op at 128K on that
#            tree and this one, alternating, twice (video, mixed).
#   skew     GPU tests of the estimate; bench_estimate.py; estimate_pass2_parts.py; OLD=tree: the op
#            at 128K on video on it and this tree; op_phases.py on video (the estimate's skewed sums
#            by one rotation of the key tile, issue 11). skew1: the same without bench_estimate and
#            op_phases (~2 min).
#   attrib   GPU tests of the estimate; bench_estimate.py; OLD=tree: the op at 128K on it and this
#            tree, alternating, twice; op_phases.py on video: the phases, then the eager choose and
#            index phases' GPU time per source line (--lines).
#   streams  OLD=tree: the choice-graph GPU test (replay equals eager, bitwise); the op at 128K on OLD
#            and this tree, alternating, twice (video, mixed); op_phases.py on video; the attend
#            phase launch by launch (attend_launches.py, video).
#   columns  OLD=tree: the kernel's and the choice graph's GPU tests; the attend phase launch by launch
#            on OLD and this tree (video); the op at 128K on both, alternating, twice (video, mixed).
#   guard    OLD=tree: the GPU tests of the held-out check's dense rows and the layer; the families at 128K (video, mixed; seed 1, 128 rows) on OLD and this tree, then
#            the op at 128K on both, alternating (video, mixed): a key just before the estimation rows
#            kept as a column when its vertical mass dominates (issue 11, fidelity). `guard video`:
#            the families on the video layout only. This tree adds two families (composite,
#            grid-temporal): they run on it alone.
#   check    OLD=tree, short (~4 min): the GPU tests of the check's dense rows, the layer and the
#            kernel's near keys (Grid.band), the families at 128K (video, seed 1) on this tree, the
#            op at 128K (video) on OLD and this tree, alternating, twice.
#   check1   the shortest: the check's GPU tests, the op at 128K (video) on OLD and this tree once, the
#            families at 128K (video) in what is left of ${2:-270} s.
#   honest   OLD=tree (~6 min): the GPU tests of the check's rows-alone launch, the layer and the
#            near keys; the op at 128K (video, mixed) on OLD and this tree; the op at 256K (video,
#            mixed) on this tree; the families at 128K (mixed, seed 1, 128 rows, --by-modality):
#            the per-modality check, the band-gap launch and Grid before dense (12-07) on the GPU.
#   cost     check_cost.py at 128K (video, mixed): the layer with the check and repairs, with the
#            patterns they end with fixed, with the first fallback only, and the first choice alone.
#   exact    OLD=tree (~4 min): the op at 128K on OLD and this tree, alternating, once (video, mixed);
#            then check_cost.py on this tree (video).
#   gate     OLD=tree (~8 min): the op at 128K on OLD and this tree (video, mixed); check_cost.py
#            (video) with a plan searched at 32K (planted video, seed 1); the op at 256K on both
#            (video, mixed): the fallback stages tried only where they can save more dense work
#            than they cost (check.stage_pays; it can only send rows dense sooner, never less exact).
#   runs     OLD=tree (~9 min): GPU tests of the patterns and the choice graph; the op at 128K on OLD and
#            this tree (video, mixed); the families at 128K (video, seed 1, 128 rows); the op at 256K on
#            both (`runs new`: this tree alone); the families at 128K (mixed) if time is left: a run of
#            sinks judged as a run. Then, if time is left, heldout_probe.py on the video layout (bf16).
#   gridt    OLD=tree (~5 min): the choice graph's GPU test; the op at 128K on OLD and this tree (video, mixed);
#            the families at 128K (video, seed 1, 128 rows); heldout_probe.py (bf16): Grid sized to
#            policy.grid_target.
#            `gridt short` (~3 min; 2026-12-07 20:02 as part gridt1): the op A/B, then the probe.
#   draw     OLD=tree (~8 min; 2026-12-07 second session): the op's planted input now drawn on the CPU
#            (the CPU probe's input): GPU tests (patterns, choice graph); the op at 128K on OLD (its
#            device draw) and this tree; op_phases.py (video, GPU time by source line); the families at 128K (video,
#            mixed; seed 1); heldout_probe.py (bf16) while time is left.
#   layouts  (~8 min) the families at 128K on the layouts never run on a GPU (several videos of different
#            frame sizes; images between long text; seed 1), the videos layout's early rows; the op at
#            256K (video, mixed); the families at 256K (mixed, seed 1) while time is left.
#   heldall  OLD=tree (~7 min): held-out rows over the whole row set: the op at 128K on OLD and this tree
#            (video, mixed); the families at 128K on several videos (seed 1), early rows then the default
#            sample; the families at 128K (video, seed 1). `heldall short` (~3 min): the op A/B on video, early rows.
#   plan12   a plan searched on the families at 32K on the video layout (seed 0; it lists the rows
#            A-shape and VS both served), applied at 128K and 256K (seed 1) with online sizes as it is
#            (the cheaper of the two there) and with those lists removed (the searched family only),
#            and the online policy on the same inputs (128 rows). `plan12 131072 [plans-only]`: 128K only
#            [and not the online policy].
# Output: $OUT/run_<part>.txt (table last) + JSON.
set -u
part=${1:-verify}
source "$(dirname "$0")/gpu_prelude.sh"
source "$(dirname "$0")/gpu_helpers.sh"
if [ "$part" = long ]; then
  tokens=${2:-1048576}
  if [ "$tokens" -ge 1000000 ]; then
    timeout 575 python3 benchmarks/bench_long.py --tokens $tokens --seq-chunk 65536 --local ${LOCAL:-16384} --out $OUT 2>&1 | quiet | tail -14
  else
    timeout 575 python3 benchmarks/bench_long.py --tokens $tokens --eager-reps 0 --dense-layers "" --local ${LOCAL:-16384} \
      --out $OUT 2>&1 | quiet | tail -10
  fi
elif [ "$part" = plans ]; then  # PLAN=<a plan searched at 32K, as verify writes it>; OLD=<tree to A/B>
  if [ -n "${OLD:-}" ]; then  # each tree importable as the wheel lays it out (gpu_issue10.sh)
    stage_trees
    op_ab 1
  fi
  for tokens in 131072 262144; do
    timeout 120 python3 benchmarks/fidelity_families.py --layout mixed --tokens $tokens --seeds 1 \
      --plan $PLAN --plan-sizes online --out $OUT/families_plan_online_$tokens.json 2>&1 | quiet | tail -14
  done
  timeout 120 python3 benchmarks/fidelity_families.py --layout mixed --tokens 262144 --seeds 1 \
    --out $OUT/families_online_262144.json 2>&1 | quiet | tail -14
  echo "--- families at 512K and 1M (online, 128 rows)"
  timeout 240 python3 benchmarks/fidelity_families.py --layout mixed --tokens 524288,1048576 --seeds 1 --rows 128 \
    --out $OUT/families_long.json 2>&1 | quiet | tail -14
  echo "=== table ==="
  grep -E "^(old|new) |^layout=|^[a-z0-9-]+ +[0-9]+ +[01]\.[0-9]+" $OUT/run_plans.txt
elif [ "$part" = planop ]; then  # PLAN=<plan file>, or searched here (planted video, seed 1, 32K, layer 0)
  if [ -z "${PLAN:-}" ]; then
    PLAN=$OUT/plan_planted_32k.json
    timeout 90 mminference search standard --source planted --layout video --tokens 32768 --layers 1 --seed 1 \
      --out $PLAN 2>&1 | quiet | tail -3
  fi
  for rep in 1 2; do
    for args in "--layout video" "--layout video --periodic-frames 16"; do
      timeout 60 python3 benchmarks/bench_prefill_op.py $args 2>&1 | quiet | tail -1
      timeout 60 python3 benchmarks/bench_prefill_op.py $args --plan $PLAN 2>&1 | quiet | tail -1
    done
  done
  echo "=== table ==="
  grep -E "131072 .*op [0-9]" $OUT/run_planop.txt
elif [ "$part" = op ]; then
  stage_trees
  op_ab 2
  echo "=== table ==="
  grep -E "^(old|new) " $OUT/run_op.txt
elif [ "$part" = graphs ]; then
  timeout 120 python3 -m pytest -q -m gpu tests/test_choice_graph.py 2>&1 | tail -2
  for rep in 1 2; do
    for args in "--layout video" "--layout mixed" "--layout video --periodic-frames 16"; do
      for graphs in 1 0; do
        echo -n "graphs=$graphs "
        MMINFERENCE_CUDA_GRAPHS=$graphs timeout 60 python3 benchmarks/bench_prefill_op.py $args 2>&1 | quiet | tail -1
      done
    done
  done
  if [ -z "${PLAN:-}" ]; then
    PLAN=$OUT/plan_planted_32k.json
    timeout 90 mminference search standard --source planted --layout video --tokens 32768 --layers 1 --seed 1 \
      --out $PLAN 2>&1 | quiet | tail -1
  fi
  for graphs in 1 0; do
    echo -n "graphs=$graphs "
    MMINFERENCE_CUDA_GRAPHS=$graphs timeout 60 python3 benchmarks/bench_prefill_op.py --layout video --plan $PLAN \
      2>&1 | quiet | tail -1
  done
  echo "=== table ==="
  grep -E "^graphs=|passed|failed" $OUT/run_graphs.txt | cut -c1-230
elif [ "$part" = phases ]; then  # OLD=tree: then the op on that tree and this one, alternating
  timeout 150 python3 benchmarks/op_phases.py --layout video --kernels 25 2>&1 | quiet | cut -c1-200
  timeout 100 python3 benchmarks/op_phases.py --layout mixed 2>&1 | quiet
  if [ -n "${OLD:-}" ]; then
    stage_trees
    op_ab 2
  fi
  echo "=== table ==="
  grep -E "^(old|new) " $OUT/run_phases.txt | cut -c1-150
elif [ "$part" = planvideo ]; then  # issue 12 on the video layout: a plan of the families at 32K (seed 0), 128K seed 1
  timeout 60 python3 -m pytest -q -m gpu tests/test_choice_graph.py 2>&1 | tail -1
  PLAN=$OUT/plan_families_video_32k.json
  timeout 120 mminference search standard --source families --tokens 32768 --layout video --layers 13 \
    --out $PLAN 2>&1 | quiet | tail -2
  timeout 150 python3 benchmarks/fidelity_families.py --layout video --tokens 131072 --seeds 1 \
    --plan $PLAN --plan-sizes online --rows 128 --out $OUT/families_video_plan.json 2>&1 | quiet | tail -14
  timeout 150 python3 benchmarks/fidelity_families.py --layout video --tokens 131072 --seeds 1 \
    --rows 128 --out $OUT/families_video_online.json 2>&1 | quiet | tail -14
elif [ "$part" = rrcheck ]; then  # the policy's exact A-shape/VS recall (row_recall): GPU tests, families at 128K
  timeout 70 python3 -m pytest -q -m gpu tests/test_choice_graph.py tests/test_patterns_gpu.py 2>&1 | tail -1
  for layout in mixed video; do
    timeout 100 python3 benchmarks/fidelity_families.py --layout $layout --tokens 131072 --seeds 1 --rows 128 \
      --out $OUT/families_${layout}_rr.json 2>&1 | quiet | tail -13
  done
elif [ "$part" = families256 ]; then
  for layout in mixed video; do
    timeout 110 python3 benchmarks/fidelity_families.py --layout $layout --tokens 262144 --seeds 2 --rows 128 \
      --out $OUT/families_${layout}_256k.json 2>&1 | quiet | tail -13
  done
  timeout 150 python3 benchmarks/fidelity_families.py --layout mixed --tokens 524288 --seeds 1 --rows 128 \
    --out $OUT/families_mixed_512k.json 2>&1 | quiet | tail -13
  timeout 90 python3 benchmarks/op_phases.py --layout video --reps 5 --host 25 2>&1 | quiet | cut -c1-150 > $OUT/host.txt
  grep -A8 "^graphs" $OUT/host.txt; grep -B2 -A30 "by tottime" $OUT/host.txt | head -40
elif [ "$part" = lines ] || [ "$part" = lines2 ]; then  # OLD=tree before the lines-first VS
  long=$([ "$part" = lines ] && echo 1)  # lines2: no GPU tests, video only at 256K, one op rep
  reps=$([ -n "$long" ] && echo 2 || echo 1)
  [ -n "$long" ] && timeout 80 python3 -m pytest -q -m gpu tests/test_patterns_gpu.py tests/test_choice_graph.py 2>&1 | tail -1
  for layout in video ${long:+mixed}; do
    timeout 100 python3 benchmarks/fidelity_families.py --layout $layout --tokens 262144 --seeds 2 --rows 128 \
      --out $OUT/f_${layout}_256k.json 2>&1 | quiet | tail -13
  done
  timeout 90 python3 benchmarks/fidelity_families.py --layout video --tokens 131072 --seeds 1 --rows 128 \
    --out $OUT/f_video_128k.json 2>&1 | quiet | tail -13
  stage_trees
  mkdir -p /tmp/op && OPDIR=/tmp/op op_ab $reps  # (their lines are in the log: $OUT brings back 8 files)
  echo "=== table ==="
  grep -E "passed|failed|^(old|new) |^layout=|^[a-z0-9-]+ +[0-9]+ +[01]\.[0-9]+" $OUT/run_$part.txt | cut -c1-200
elif [ "$part" = lines3 ]; then  # the mixed layout after lines2's changes: 256K (seed 2), 128K and 512K (seed 1)
  timeout 100 python3 benchmarks/fidelity_families.py --layout mixed --tokens 262144 --seeds 2 --rows 128 \
    --out $OUT/f_mixed_256k.json 2>&1 | quiet | tail -13
  timeout 150 python3 benchmarks/fidelity_families.py --layout mixed --tokens 131072,524288 --seeds 1 --rows 128 \
    --out $OUT/f_mixed_128k_512k.json 2>&1 | quiet | tail -26
elif [ "$part" = skew ] || [ "$part" = skew1 ]; then  # skew1: no bench_estimate, no phases, the op on video
  short=$([ "$part" = skew1 ] && echo 1)
  timeout 80 python3 -m pytest -q -m gpu tests/test_patterns_gpu.py -k "line_scores or policy_layer" 2>&1 | tail -1
  [ -z "$short" ] && timeout 60 python3 benchmarks/bench_estimate.py 2>&1 | quiet
  timeout 60 python3 benchmarks/estimate_pass2_parts.py 2>&1 | quiet | grep -E "product|pass 1|warps 4 skew [13]"
  stage_trees
  for which in old new; do  # the op at 128K, video (one rep a tree)
    echo -n "$which "
    PYTHONPATH=/tmp/$which timeout 60 python3 benchmarks/bench_prefill_op.py --layout video 2>&1 | quiet | tail -1
  done
  [ -z "$short" ] && timeout 100 python3 benchmarks/op_phases.py --layout video --reps 3 2>&1 | quiet | cut -c1-170
  echo "=== table ==="
  grep -E "passed|failed|ms   max diff|pass 1|product|warps|^(old|new) |^ +[01] \|" $OUT/run_$part.txt | cut -c1-200
elif [ "$part" = streams ]; then
  timeout 90 python3 -m pytest -q -m gpu tests/test_choice_graph.py tests/test_patterns_gpu.py 2>&1 | tail -1
  stage_trees
  mkdir -p /tmp/op && OPDIR=/tmp/op op_ab 2
  timeout 100 python3 benchmarks/op_phases.py --layout video --reps 5 2>&1 | quiet | cut -c1-170
  timeout 100 python3 benchmarks/attend_launches.py --layout video --out $OUT/attend_video.json 2>&1 | quiet | tail -7
  echo "=== table ==="
  grep -E "passed|failed|^(old|new) |^ +[01] \|" $OUT/run_streams.txt | cut -c1-200
elif [ "$part" = columns ]; then
  timeout 150 python3 -m pytest -q -m gpu tests/test_kernel_gpu.py tests/test_choice_graph.py 2>&1 | tail -1
  stage_trees
  for layout in video; do
    for which in old new; do
      echo "$which attend"
      PYTHONPATH=/tmp/$which timeout 100 python3 benchmarks/attend_launches.py --layout $layout 2>&1 | quiet | tail -5
    done
  done
  mkdir -p /tmp/op && OPDIR=/tmp/op op_ab 2
  echo "=== table ==="
  grep -E "passed|failed|attend|^[0-9]+ \||^sparse|^(old|new) " $OUT/run_columns.txt | cut -c1-200
elif [ "$part" = guard ]; then
  timeout 150 python3 -m pytest -q -m gpu tests/test_patterns_gpu.py tests/test_kernel_gpu.py -k "dense_rows or policy_layer or near_keys" 2>&1 | quiet | tail -3
  stage_trees
  for which in old new; do
    mkdir -p /tmp/$which/bench && cp benchmarks/fidelity_families.py /tmp/$which/bench/
    for layout in ${2:-video mixed}; do
      echo "$which $layout"
      timeout $([ $which = new ] && echo 170 || echo 110) python3 /tmp/$which/bench/fidelity_families.py \
        --layout $layout --tokens 131072 --seeds 1 --rows 128 --out $OUT/f_${layout}_128k_$which.json 2>&1 \
        | quiet | tail -15
    done
  done
  mkdir -p /tmp/op && OPDIR=/tmp/op op_ab 1
  echo "=== table ==="
  grep -E "^(old|new) |^layout=|^[a-z0-9-]+ +[0-9]+ +[01]\.[0-9]+" $OUT/run_guard.txt | cut -c1-130
elif [ "$part" = check ]; then  # short: OLD=tree; the check's GPU tests, the families at 128K (video) on
  # this tree only, the op at 128K (video) on OLD and this tree: the output-error check's cost
  timeout 150 python3 -m pytest -q -m gpu tests/test_patterns_gpu.py tests/test_kernel_gpu.py -k "dense_rows or policy_layer or near_keys" 2>&1 | quiet | tail -3
  timeout 170 python3 benchmarks/fidelity_families.py --layout video --tokens 131072 --seeds 1 --rows 128 \
    --out $OUT/f_video_128k_new.json 2>&1 | quiet | tail -15
  stage_trees
  for which in old new old new; do
    echo -n "$which "
    PYTHONPATH=/tmp/$which timeout 60 python3 benchmarks/bench_prefill_op.py --layout video \
      --out $OUT/op_video_$which.json 2>&1 | quiet | tail -1
  done
elif [ "$part" = check1 ]; then  # shortest (OLD=tree; the device time nearly spent): the check's GPU
  # tests, the op at 128K (video) on OLD and this tree once, then the families at 128K (video) on
  # this tree in what is left of ${2:-270} s
  timeout 150 python3 -m pytest -q -m gpu tests/test_patterns_gpu.py tests/test_kernel_gpu.py -k "dense_rows or policy_layer or near_keys" 2>&1 | quiet | tail -3
  stage_trees
  for which in old new; do
    echo -n "$which "
    PYTHONPATH=/tmp/$which timeout 60 python3 benchmarks/bench_prefill_op.py --layout video \
      --out $OUT/op_video_$which.json 2>&1 | quiet | tail -1
  done
  left=$(( ${2:-270} - SECONDS ))
  [ $left -gt 40 ] && timeout $left python3 benchmarks/fidelity_families.py --layout video --tokens 131072 --seeds 1 \
    --rows 128 --out $OUT/f_video_128k_new.json 2>&1 | quiet | tail -15
elif [ "$part" = honest ]; then  # OLD=tree: the 12-07 check changes on the GPU
  timeout 150 python3 -m pytest -q -m gpu tests/test_patterns_gpu.py tests/test_kernel_gpu.py \
    -k "missing_rows or dense_rows or policy_layer or near_keys" 2>&1 | quiet | tail -2
  stage_trees
  for layout in video mixed; do
    for which in old new; do
      echo -n "$which "
      PYTHONPATH=/tmp/$which timeout 70 python3 benchmarks/bench_prefill_op.py --layout $layout \
        --out $OUT/op_${layout}_$which.json 2>&1 | quiet | tail -1
    done
  done
  for layout in video mixed; do
    timeout 100 python3 benchmarks/bench_prefill_op.py --layout $layout --tokens 262144 \
      --out $OUT/op_${layout}_256k.json 2>&1 | quiet | tail -1
  done
  timeout 150 python3 benchmarks/fidelity_families.py --layout mixed --tokens 131072 --seeds 1 --rows 128 \
    --by-modality --out $OUT/f_mixed_128k.json 2>&1 | quiet | tail -15
elif [ "$part" = cost ]; then
  for layout in video mixed; do
    timeout 200 python3 benchmarks/check_cost.py --layout $layout 2>&1 | quiet | tail -36
  done
elif [ "$part" = exact ]; then
  stage_trees
  op_ab 1
  timeout 120 python3 benchmarks/check_cost.py --layout video --reps 5 2>&1 | quiet | tail -36
elif [ "$part" = gate ]; then  # OLD=tree (~8 min): a fallback stage only where it can save more than it costs
  stage_trees
  op_ab 1
  PLAN=$OUT/plan_planted_32k.json
  timeout 90 mminference search standard --source planted --layout video --tokens 32768 --layers 1 --seed 1 \
    --out $PLAN 2>&1 | quiet | tail -1
  timeout 150 python3 benchmarks/check_cost.py --layout video --reps 5 --plan $PLAN 2>&1 | quiet | tail -38
  for layout in video mixed; do
    for which in old new; do
      echo -n "$which "
      PYTHONPATH=/tmp/$which timeout 70 python3 benchmarks/bench_prefill_op.py --layout $layout --tokens 262144 \
        --out $OUT/op_${layout}_256k_$which.json 2>&1 | quiet | tail -1
    done
  done
  echo "=== table ==="
  grep -E "^(old|new) |ms  density" $OUT/run_gate.txt | cut -c1-220
elif [ "$part" = runs ]; then  # OLD=tree (~9 min): the lighter keys of a run of sinks stay columns
  timeout 90 python3 -m pytest -q -m gpu tests/test_patterns_gpu.py tests/test_choice_graph.py 2>&1 | tail -1
  stage_trees
  mkdir -p /tmp/op && OPDIR=/tmp/op op_ab 1 && cp /tmp/op/op_*_new_1.json $OUT/  # at most 8 files come back
  timeout 100 python3 benchmarks/fidelity_families.py --layout video --tokens 131072 --seeds 1 --rows 128 \
    --out $OUT/families_video_131072.json 2>&1 | quiet | tail -13
  for layout in video mixed; do
    for which in $(echo "new ${2:-old}" | tr " " "\n" | sort -u -r); do  # `runs new`: this tree alone at 256K
      echo -n "$which "
      PYTHONPATH=/tmp/$which timeout 70 python3 benchmarks/bench_prefill_op.py --layout $layout --tokens 262144 \
        --out /tmp/op/op_${layout}_256k_$which.json 2>&1 | quiet | tail -1
    done
  done
  cp /tmp/op/op_*_256k_new.json $OUT/
  [ $SECONDS -lt 440 ] && timeout $((580 - SECONDS)) python3 benchmarks/fidelity_families.py --layout mixed \
    --tokens 131072 --seeds 1 --rows 128 --out $OUT/families_mixed_131072.json 2>&1 | quiet | tail -13
  [ $SECONDS -lt 530 ] && timeout $((590 - SECONDS)) python3 benchmarks/heldout_probe.py --tokens 131072 --bf16 \
    2>&1 | quiet | grep -E "MISS|miss on" | cut -c1-400
  echo "=== table ==="
  grep -E "passed|failed|^(old|new) " $OUT/run_runs.txt | cut -c1-260
elif [ "$part" = gridt ]; then  # OLD=tree (~5 min; `gridt short` ~3 min): Grid sized to policy.grid_target
  short=${2:-}
  [ -z "$short" ] && timeout 60 python3 -m pytest -q -m gpu tests/test_choice_graph.py 2>&1 | tail -1
  stage_trees
  mkdir -p /tmp/op && OPDIR=/tmp/op op_ab 1 && cp /tmp/op/op_*_new_1.json $OUT/
  [ -z "$short" ] && timeout 100 python3 benchmarks/fidelity_families.py --layout video --tokens 131072 --seeds 1 \
    --rows 128 --out $OUT/families_video_131072.json 2>&1 | quiet | tail -13
  left=$([ -z "$short" ] && echo 400 || echo 270)
  [ $SECONDS -lt $((left - 70)) ] && timeout $((left - SECONDS)) python3 benchmarks/heldout_probe.py --tokens 131072 \
    --bf16 2>&1 | quiet | grep -E "MISS|miss on" | cut -c1-400
  echo "=== table ==="
  grep -E "passed|failed|^(old|new) " $OUT/run_gridt.txt | cut -c1-260
elif [ "$part" = draw ]; then
  timeout 90 python3 -m pytest -q -m gpu tests/test_patterns_gpu.py tests/test_choice_graph.py 2>&1 | tail -1
  stage_trees
  mkdir -p /tmp/op && OPDIR=/tmp/op op_ab 1 && cp /tmp/op/op_*_new_1.json $OUT/
  timeout 120 python3 benchmarks/op_phases.py --layout video --lines 20 2>&1 | quiet | cut -c1-200
  families_at video 131072 video_131072
  families_at mixed 131072 mixed_131072
  [ $SECONDS -lt 480 ] && timeout $((585 - SECONDS)) python3 benchmarks/heldout_probe.py --tokens 131072 --bf16 \
    2>&1 | quiet | grep -E "MISS|miss on" | cut -c1-400
  echo "=== table ==="
  grep -E "passed|failed|^(old|new) |^ *[01] \|" $OUT/run_draw.txt | cut -c1-260
elif [ "$part" = layouts ]; then
  families_at videos 131072 videos_131072
  families_at images 131072 images_131072
  families_at videos 131072 videos_131072_early --early-rows
  for layout in video mixed; do
    timeout 70 python3 benchmarks/bench_prefill_op.py --layout $layout --tokens 262144 \
      --out $OUT/op_${layout}_256k.json 2>&1 | quiet | tail -1
  done
  [ $SECONDS -lt 460 ] && families_at mixed 262144 mixed_262144
  echo "=== table ==="
  grep -E "^layout=|^[a-z0-9-]+ +[0-9]+ +[01]\.[0-9]+|262144 28/4" $OUT/run_layouts.txt | cut -c1-200
elif [ "$part" = heldall ]; then
  stage_trees
  mkdir -p /tmp/op && OPDIR=/tmp/op op_ab 1 "$([ -n "${2:-}" ] && echo video)" && cp /tmp/op/op_*_new_1.json $OUT/
  families_at videos 131072 videos_131072_early --early-rows
  if [ -z "${2:-}" ]; then  # `heldall short`: early rows only
    families_at videos 131072 videos_131072
    [ $SECONDS -lt 470 ] && families_at video 131072 video_131072
  fi
  echo "=== table ==="
  grep -E "^(old|new) " $OUT/run_heldall.txt | cut -c1-260
elif [ "$part" = plan12 ]; then
  PLAN=$OUT/plan_families_video_32k.json
  timeout 150 mminference search standard --source families --tokens 32768 --layout video --layers 13 \
    --out $PLAN 2>&1 | quiet | tail -2
  python3 -c "import dataclasses, sys; from mmcompile.plans import load_plan, save_plan; p = load_plan(sys.argv[1]); \
save_plan(dataclasses.replace(p, layers={l: tuple(dataclasses.replace(h, interchangeable=()) for h in hs) \
for l, hs in p.layers.items()}), sys.argv[2])" $PLAN /tmp/plan_strict.json
  mminference plan show $PLAN 2>&1 | quiet | tail -12
  for tokens in ${2:-131072 262144}; do
    for which in $PLAN /tmp/plan_strict.json; do
      echo "plan $which"
      timeout 100 python3 benchmarks/fidelity_families.py --layout video --tokens $tokens --seeds 1 --plan $which \
        --plan-sizes online --rows 128 --out $OUT/families_${tokens}_$(basename $which .json).json 2>&1 | quiet | tail -13
    done
    [ "${3:-}" = plans-only ] || timeout 100 python3 benchmarks/fidelity_families.py --layout video --tokens $tokens \
      --seeds 1 --rows 128 --out $OUT/families_${tokens}_online.json 2>&1 | quiet | tail -13
  done
elif [ "$part" = attrib ]; then
  timeout 80 python3 -m pytest -q -m gpu tests/test_patterns_gpu.py tests/test_choice_graph.py 2>&1 | tail -1
  timeout 60 python3 benchmarks/bench_estimate.py 2>&1 | quiet
  if [ -n "${OLD:-}" ]; then
    stage_trees
    mkdir -p /tmp/op && OPDIR=/tmp/op op_ab 2
  fi
  timeout 200 python3 benchmarks/op_phases.py --layout video --reps 3 --lines 45 2>&1 | quiet | cut -c1-170
  echo "=== table ==="
  grep -E "passed|failed|ms   max diff|pass 1|^(old|new) " $OUT/run_attrib.txt | cut -c1-200
elif [ "$part" = fused ]; then
  timeout 90 python3 -m pytest -q -m gpu tests/test_patterns_gpu.py tests/test_choice_graph.py 2>&1 | tail -1
  timeout 60 python3 benchmarks/bench_estimate.py 2>&1 | quiet
  timeout 120 python3 benchmarks/op_phases.py --layout video --reps 5 --kernels 25 2>&1 | quiet | cut -c1-62,115-200
  stage_trees
  op_ab 2
  echo "=== table ==="
  grep -E "passed|failed|ms   max diff|^ +[01] \||^(old|new) " $OUT/run_fused.txt | cut -c1-200
elif [ "$part" = hostprof ]; then
  timeout 60 python3 -m pytest -q -m gpu tests/test_patterns_gpu.py tests/test_choice_graph.py 2>&1 | tail -1
  timeout 60 python3 benchmarks/bench_estimate.py 2>&1 | quiet
  timeout 150 python3 benchmarks/op_phases.py --layout video --reps 3 --kernels 30 --stacks 4 2>&1 | quiet \
    | grep -v -E "^ *$" | cut -c1-250 | tail -75
  for layout in video mixed; do
    timeout 200 python3 benchmarks/op_phases.py --layout $layout --reps 5 --host 30 2>&1 | quiet \
      | cut -c1-160 | head -95
  done
elif [ "$part" = validate ]; then  # rrcheck + the op against OLD (a tree before the change), once
  timeout 70 python3 -m pytest -q -m gpu tests/test_choice_graph.py tests/test_patterns_gpu.py 2>&1 | tail -1
  for layout in mixed video; do
    timeout 100 python3 benchmarks/fidelity_families.py --layout $layout --tokens 131072 --seeds 1 --rows 128 \
      --out $OUT/families_${layout}_rr.json 2>&1 | quiet | tail -13
  done
  stage_trees
  op_ab 1
  echo "=== table ==="
  grep -E "passed|failed|^(old|new) |^layout=|^[a-z0-9-]+ +[0-9]+ +[01]\.[0-9]+" $OUT/run_validate.txt | cut -c1-200
elif [ "$part" = verify ]; then
  for layout in video mixed; do
    for mib in 512 1024; do
      timeout 60 python3 benchmarks/bench_prefill_op.py --layout $layout --probs-mib $mib \
        --out $OUT/op_${layout}_$mib.json 2>&1 | quiet | tail -1
    done
  done
  echo "--- plan searched at 32K (mixed, seed 0), applied at 128K (seed 1)"
  timeout 120 mminference search standard --source families --tokens 32768 --layout mixed --layers 13 \
    --out $OUT/plan_families_32k.json 2>&1 | quiet | tail -4
  timeout 100 python3 benchmarks/fidelity_families.py --layout mixed --tokens 131072 --seeds 1 \
    --plan $OUT/plan_families_32k.json --plan-sizes online --out $OUT/families_plan_online.json 2>&1 | quiet | tail -14
  echo "--- families at 512K and 1M (online, 128 rows)"
  timeout 150 python3 benchmarks/fidelity_families.py --layout mixed --tokens 524288,1048576 --seeds 1 --rows 128 \
    --out $OUT/families_long.json 2>&1 | quiet | tail -14
  echo "--- profile 128K video (host and GPU time per part)"
  timeout 60 python3 benchmarks/profile_index.py --tokens 131072 2>&1 | quiet > $OUT/profile_128k.txt
  grep -A40 "^part " $OUT/profile_128k.txt
  echo "--- exactness at 1M on a slice"
  timeout 60 python3 benchmarks/long_exactness.py --tokens 1048576 --out $OUT 2>&1 | quiet | tail -4
  echo "=== table ==="
  grep -E "131072 probs|^layout=|^[a-z0-9-]+ +[0-9]+ +[01]\.[0-9]+|rows \|" $OUT/run_verify.txt
fi
