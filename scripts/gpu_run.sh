#!/usr/bin/env bash
# One prepared GPU session: build the extension, run the CUDA tests, the purification
# benchmark (PreAct-ResNet-18 with an ablation of the engine's levers, WRN-28-10) and the
# fast-path parity check; everything lands in $OUT (default runs/gpu).
#
#   DATA=gpu_data/cifar10 bash scripts/gpu_run.sh
#
# A lent GPU machine gets the checkout but not ../shared: copy ../shared/data/cifar10/test.zip
# into gpu_data/cifar10/ (git-ignored) and carry that folder, as the run above did.
#
# Each stage has its own time limit, so one that hangs cannot eat the others' time; a stage
# that fails is reported in the log and the next one runs. STAGES picks some (default: all of
# env build extension cuda-tests bench-a parity bench-b table profile profile-b). SMOKE=1 shrinks every
# stage (tiny model, K=2, a few images) to check the script itself on a CPU machine.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
DATA=${DATA:-../shared/data/cifar10}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
LOG="$OUT/log.txt"

if [ "${SMOKE:-0}" = 1 ]; then
  MODEL_A=preact_resnet_tiny MODEL_B=preact_resnet_tiny STEPS=2 BATCHES_A=1,4 BATCHES_B=2 PARITY_N=8 PARITY_BATCH=4
  VARIANTS=fp32-eager,bf16-eager
else
  MODEL_A=preact_resnet18 MODEL_B=wide_resnet28_10 STEPS=40 BATCHES_A=1,32,128,512 BATCHES_B=1,32,128
  PARITY_N=10000 PARITY_BATCH=1000 VARIANTS=fp32-eager,bf16-eager,bf16-nhwc-eager,bf16-nhwc-graph
fi

STAGES=${STAGES:-env build extension cuda-tests bench-a parity bench-b table profile profile-b}

stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  [[ " $STAGES " == *" $name "* ]] || return 0
  echo "=== $name (limit ${limit}s)" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  echo "=== $name: exit ${PIPESTATUS[0]} in $((SECONDS - start)) s" | tee -a "$LOG"
}

stage env 30 bash -c 'nvidia-smi -L; python3 -c "import torch, sys; print(sys.version); print(torch.__version__, torch.cuda.is_available())"'
[ "${SMOKE:-0}" = 1 ] || stage build 300 python3 -m pip install --no-build-isolation --no-deps -e .
stage extension 60 python3 -c "import pyengine.ops as o; print('extension', o.extension_loaded(), 'cuda kernels', o.cuda_kernels_built())"
stage cuda-tests 180 python3 -m pytest tests -q -rf -p no:cacheprovider \
  -k "cuda or captured or graph_cache or channels_last_backbone"
stage bench-a 240 env PYENGINE_BENCH_MODEL=$MODEL_A PYENGINE_BENCH_STEPS=$STEPS PYENGINE_BENCH_BATCHES=$BATCHES_A \
  PYENGINE_BENCH_VARIANTS=$VARIANTS python3 -m pytest bench/test_bench_purify.py -q -p no:cacheprovider \
  --benchmark-only --benchmark-json "$OUT/bench_$MODEL_A.json"
stage parity 150 python3 -m pyengine parity --data "$DATA" --n $PARITY_N --batch-size $PARITY_BATCH \
  --checkpoint pyengine/checkpoints/cifar10_preact_resnet_tiny.safetensors --out "$OUT/parity.json"
stage bench-b 240 env PYENGINE_BENCH_MODEL=$MODEL_B PYENGINE_BENCH_STEPS=$STEPS PYENGINE_BENCH_BATCHES=$BATCHES_B \
  python3 -m pytest bench/test_bench_purify.py -q -p no:cacheprovider -k "engine or published" \
  --benchmark-only --benchmark-json "$OUT/bench_$MODEL_B.json"
stage table 60 bash -c "python3 -m pyengine bench $OUT/bench_*.json --peak-tflops 790 > $OUT/table.md; cat $OUT/table.md"
[ "${SMOKE:-0}" = 1 ] || stage profile 200 python3 bench/profile_purify.py --model $MODEL_A --batch 512 --compile \
  --out "$OUT/profile.json"
[ "${SMOKE:-0}" = 1 ] || stage profile-b 200 python3 bench/profile_purify.py --model $MODEL_B --batch 128 --compile \
  --out "$OUT/profile_$MODEL_B.json"
