# Sourced by the benchmarks/gpu_*.sh scripts: the GPU, driver and library versions and the date,
# at the top of every run's output (what BENCHMARKS.md entries cite).
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
date -u
