# Sourced by the part-based benchmarks/gpu_*.sh scripts after they set `part`: output to the
# terminal and $OUT/run_<part>.txt, the versions and date on top (gpu_env.sh), this checkout
# installed (the device's image has no mmcompile), unbuffered Python, and `quiet` (a filter that
# drops warnings and blank lines).
OUT=${OUT:-/tmp/out}
mkdir -p $OUT
exec > >(tee $OUT/run_$part.txt) 2>&1
source "$(dirname "${BASH_SOURCE[0]}")/gpu_env.sh"
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "install failed"
export PYTHONUNBUFFERED=1
quiet() { grep -v -i -E "warn|^ *$"; }
