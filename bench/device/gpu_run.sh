#!/usr/bin/env bash
# The one command for a lent GPU machine (Python 3.12, torch preinstalled, no internet), run
# from the repo root with .whl carried (make it with bench/device/fetch_wheels.sh):
#
#   run(command="bash bench/device/gpu_run.sh", carry=[".whl"], timeout_s=560)
#
# gpu_speed.py (issue 6) runs first, then dit_speed.py (Flux/SD3.5 shapes, issue 13),
# gpu_check.py (issue 4) and compile_cache.py --cuda with the time left. Every log lands in
# $OUT; gpu_speed, dit_speed and gpu_check also append their tables to bench/RESULTS.md there, which comes back as $OUT/RESULTS.md: copy the new sections into
# bench/RESULTS.md here, with compile_cache.log's lines, and commit them.
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/sdtui-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site
{ nvidia-smi; python3 -c 'import torch, diffusers, transformers; print(torch.__version__, torch.version.cuda, diffusers.__version__, transformers.__version__)'; } 2>&1 | tee "$OUT/env.txt"
start=$SECONDS
timeout 330 python3 bench/gpu_speed.py 2>&1 | tee "$OUT/gpu_speed.log" | grep -v "it/s]"
left=$(( 540 - (SECONDS - start) ))
if [ "$left" -gt 150 ]; then  # Flux.1 schnell / SD3.5 medium shapes (issue 13): never run on a GPU
  timeout 150 python3 bench/dit_speed.py --rounds 1 2>&1 | tee "$OUT/dit_speed.log"
fi
left=$(( 540 - (SECONDS - start) ))
if [ "$left" -gt 60 ]; then
  timeout $(( left > 240 ? 240 : left )) python3 bench/gpu_check.py 2>&1 | tee "$OUT/gpu_check.log" | grep -v "it/s]"
else
  echo "no time left for gpu_check.py ($left s)"
fi
left=$(( 540 - (SECONDS - start) ))
if [ "$left" -gt 100 ]; then
  timeout "$left" python3 bench/compile_cache.py --cuda 2>&1 | tee "$OUT/compile_cache.log"
else
  echo "no time left for compile_cache.py ($left s)"
fi
cp bench/RESULTS.md "$OUT/RESULTS.md"
