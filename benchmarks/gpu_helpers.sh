# Sourced by gpu_session*.sh after gpu_prelude.sh: staging an old tree beside this one, the op A/B
# on them, and the families at one length.
stage_trees() {  # $OLD and this checkout, each importable as the wheel lays it out (gpu_issue10.sh)
  mkdir -p /tmp/old /tmp/new && cp -r $OLD/mmcompile /tmp/old/ && cp -r $OLD/kernels /tmp/old/mmcompile/kernels \
    && cp -r $OLD/passes /tmp/old/mmcompile/passes && cp -r mmcompile /tmp/new/ \
    && cp -r kernels /tmp/new/mmcompile/kernels && cp -r passes /tmp/new/mmcompile/passes
}
op_ab() {  # op_ab REPS [LAYOUTS]: the op at 128K on the staged trees, alternating old and new (video, mixed); JSON to $OPDIR
  for rep in $(seq $1); do
    for layout in ${2:-video mixed}; do
      for which in old new; do
        echo -n "$which "
        PYTHONPATH=/tmp/$which timeout 60 python3 benchmarks/bench_prefill_op.py --layout $layout \
          --out ${OPDIR:-$OUT}/op_${layout}_${which}_$rep.json 2>&1 | quiet | tail -1
      done
    done
  done
}
families_at() {  # families_at LAYOUT TOKENS NAME [ARGS...]: the families (seed 1, 128 rows) -> $OUT/families_NAME.json
  local layout=$1 tokens=$2 name=$3
  shift 3
  timeout 110 python3 benchmarks/fidelity_families.py --layout $layout --tokens $tokens --seeds 1 --rows 128 "$@" \
    --out $OUT/families_$name.json 2>&1 | quiet | tail -13
}
