#!/usr/bin/env bash
# Reproduce the papers' settings with the engine's own commands (issue 9): train four
# classifiers and two contrastive heads on CIFAR-10, evaluate each under the static and
# adaptive attacks, draw the figures for the adversarially trained model, and assemble
# docs/RESULTS.md with the papers' numbers beside ours.
#
#   bash scripts/reproduce_papers.sh                # full scale: needs a GPU (hours)
#   SMOKE=1 bash scripts/reproduce_papers.sh        # tiny scale on a CPU: checks the pipeline (minutes)
#
# Every step skips its output when it exists (and training resumes per epoch), so an
# interrupted run continues where it stopped: run it again, e.g. in several GPU slices.
# Knobs (environment): OUT, DATA, DEVICE, MODEL, EPOCHS, HEAD_EPOCHS, N, ATTACKS, FIGURES.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/reproduce}
DATA=${DATA:-../shared/data/cifar10}
DEVICE=${DEVICE:-$(python3 -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")}
if [ "${SMOKE:-0}" = 1 ]; then
  OUT=${OUT%/}_smoke MODEL=${MODEL:-preact_resnet_tiny} EPOCHS=${EPOCHS:-1} HEAD_EPOCHS=${HEAD_EPOCHS:-1}
  N=${N:-8} ATTACKS=${ATTACKS:-pgd3,bpda-pgd2} FIGURES=${FIGURES:-4} LIMIT="--limit 256" TEST_LIMIT="--test-limit 64"
  STEPS="--steps 2"
else
  # Fewer epochs than the papers' 200 (one-cycle schedule): what GPU slices of 15 minutes
  # allow; every checkpoint's manifest records the command that made it.
  MODEL=${MODEL:-preact_resnet18} EPOCHS=${EPOCHS:-30} HEAD_EPOCHS=${HEAD_EPOCHS:-20} N=${N:-1000}
  ATTACKS=${ATTACKS:-pgd50,pgd200,bim200,cw200,autoattack,adaptive} FIGURES=${FIGURES:-500} LIMIT="" TEST_LIMIT=""
  STEPS=""
fi
mkdir -p "$OUT"
run() {  # run OUTPUT COMMAND...: skip when OUTPUT exists
  local output=$1
  shift
  if [ -e "$output" ]; then echo "== $output exists, skipped"; return; fi
  echo "== $*"
  "$@"
}
common=(--data "$DATA")

# Classifiers: standard, FGSM-RS adversarial, SOAP label consistency and rotation prediction.
run "$OUT/standard_classifier.safetensors" python3 -m pyengine train-classifier --model "$MODEL" \
  --epochs "$EPOCHS" --device "$DEVICE" --out "$OUT/standard_classifier.safetensors" $LIMIT $TEST_LIMIT "${common[@]}"
run "$OUT/adversarial_classifier.safetensors" python3 -m pyengine train-classifier --model "$MODEL" \
  --epochs "$EPOCHS" --adversarial fgsm --device "$DEVICE" --out "$OUT/adversarial_classifier.safetensors" \
  $LIMIT $TEST_LIMIT "${common[@]}"
for task in consistency rotation; do
  run "$OUT/soap_$task.safetensors" python3 -m pyengine train-classifier --model "$MODEL" --epochs "$EPOCHS" \
    --aux $task --device "$DEVICE" --out "$OUT/soap_$task.safetensors" $LIMIT $TEST_LIMIT "${common[@]}"
done

# Contrastive heads G (and their banks of negatives) on the frozen classifiers.
for name in standard adversarial; do
  run "$OUT/$name.safetensors" python3 -m pyengine train-head --checkpoint "$OUT/${name}_classifier.safetensors" \
    --epochs "$HEAD_EPOCHS" --device "$DEVICE" --out "$OUT/$name.safetensors" $LIMIT "${common[@]}"
done

# Evaluations: <setting>/results.json, the layout `pyengine results` reads.
evaluate() {  # evaluate SETTING CHECKPOINT [extra eval arguments]
  local setting=$1 checkpoint=$2
  shift 2
  run "$OUT/$setting/results.json" python3 -m pyengine eval --checkpoint "$checkpoint" --n "$N" \
    --attacks "$ATTACKS" --device "$DEVICE" --out "$OUT/$setting" $STEPS "$@" "${common[@]}"
}
evaluate standard "$OUT/standard.safetensors"
evaluate adversarial "$OUT/adversarial.safetensors" --figures "$FIGURES"
evaluate soap_lc "$OUT/soap_consistency.safetensors"
evaluate soap_rp "$OUT/soap_rotation.safetensors"

device_name=$(python3 -c "
import torch
print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'the CPU (smoke scale)')")
python3 -m pyengine results "$OUT" --device-name "$device_name" --out "$OUT/RESULTS.md"
echo "done: $OUT/RESULTS.md (copy it to docs/RESULTS.md with the figures from $OUT/adversarial/figures)"
