#!/usr/bin/env bash
# Every GPU check and measurement in one call, for a lent GPU machine with its own CUDA torch:
#   tools/gpu_check.sh OUT_DIR DATA [WHEELS_DIR] [STEP_FLOOR_SCRIPT]
# OUT_DIR receives the logs, tables and JSON; DATA is the IMDB data (the npm package's .tgz is enough);
# WHEELS_DIR holds wheels the machine lacks (Keras 3 and its small dependencies), installed to a
# private folder; STEP_FLOOR_SCRIPT is the measuring stick run beside the bench (optional).
# Steps go on after a failure; the summary at the end says which failed. Under 5 minutes on one H200.
set -uo pipefail
out=${1:?usage: tools/gpu_check.sh OUT_DIR DATA [WHEELS_DIR] [STEP_FLOOR_SCRIPT]}
data=${2:?usage: tools/gpu_check.sh OUT_DIR DATA [WHEELS_DIR] [STEP_FLOOR_SCRIPT]}
wheels=${3:-}
floor=${4:-}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export RNNSENT_CACHE=${RNNSENT_CACHE:-/tmp/rnnsent-gpu-cache}
py=${PYTHON:-python3}
summary=()

step() {  # step NAME COMMAND...: run, log to OUT/NAME.log, record status and seconds
  local name=$1; shift
  local t0=$SECONDS
  echo "=== $name: $*"
  "$@" >"$out/$name.log" 2>&1
  local rc=$?
  summary+=("$(printf '%-14s rc=%-3s %4ss' "$name" "$rc" "$((SECONDS - t0))")")
  tail -n 25 "$out/$name.log"
}

if [ -n "$wheels" ] && ls "$wheels"/*.whl >/dev/null 2>&1; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/rnnsent-site "$wheels"/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/rnnsent-site"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
  $py -c "import torch, platform; print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), torch.cuda.get_device_name())"
  KERAS_BACKEND=torch $py -c "import keras; print('keras', keras.__version__)" 2>&1 | tail -1; } | tee "$out/machine.txt"

step pytest_gpu $py -m pytest -m gpu -q -p no:cacheprovider tests
# The headline command, full data, default settings (3 epochs, batch 64), then bf16 and the other cells.
step train_gru $py scripts/train.py --cell gru --device cuda --data "$data" --out "$out/runs/gru"
step diag $py tools/gpu_diag.py --data "$data" --cell gru --json "$out/diag.json"
# Keras' torch backend runs SimpleRNN as a Python loop over the 500 steps (186 samples/s on an H200, 131 s
# for the epoch and its test pass), so it joins only with RNNSENT_GPU_CHECK_ALL=1; the rest stays under 5 minutes.
if [ -n "${RNNSENT_GPU_CHECK_ALL:-}" ]; then
  step bench $py tools/bench.py --device cuda --data "$data" --systems rnnsent plain keras --json "$out/bench_cuda.json"
else
  step bench $py tools/bench.py --device cuda --data "$data" --cells gru lstm --systems rnnsent plain keras --json "$out/bench_cuda.json"
  step bench_rnn $py tools/bench.py --device cuda --data "$data" --cells rnn --systems rnnsent plain --json "$out/bench_cuda_rnn.json"
fi
[ -n "$floor" ] && step step_floor $py "$floor" "$out/gpu_step_floor.json"
step train_gru_bf16 $py scripts/train.py --cell gru --device cuda --amp bf16 --data "$data" --out "$out/runs/gru-bf16"
step train_lstm $py scripts/train.py --cell lstm --device cuda --data "$data" --out "$out/runs/lstm"
step train_rnn $py scripts/train.py --cell rnn --device cuda --data "$data" --out "$out/runs/rnn"
rm -f "$out"/runs/*/*.pt  # results travel back; weights are not needed

echo "=== default command, full data (epochs 1-3: seconds, validation accuracy; test accuracy)"
for r in "$out"/runs/*; do
  $py - "$r" <<'EOF'
import json, sys, pathlib
run = pathlib.Path(sys.argv[1])
rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
rep = json.loads((run / "report.json").read_text())
print(f"{run.name:9s}", " ".join(f"{r['epoch_seconds']:.1f}s/{r['val_accuracy']:.4f}" for r in rows),
      f"test {rep['test_accuracy']:.4f}", rep["device"])
EOF
done
echo "=== steps"
printf '%s\n' "${summary[@]}" | tee "$out/summary.txt"
