#!/usr/bin/env bash
# (the first command installs the wheels the GPU machine lacks, from .whl/, as the session requires)
# One GPU session's measurements for issues 26, 25 and 18, in two calls of under 10 minutes each (the device
# tool's per-command limit): `bash bench/gpu_check.sh sd15` runs parts 1-3 and 6, `... sdxl` parts 4-6:
#   1. the card and torch version (nvidia-smi)
#   2. the GPU tests: python3 -m pytest -q -m gpu tests/ -x
#   3. bench/train_speed.py --case sd15: SD1.5-sized random weights, 512 px, batch 1 and 8, bf16,
#      gradient checkpointing; lorasmith and the diffusers + PEFT reference loop in the same run,
#      warm-up then >= 10 timed steps each; samples/s, FLOPs counted with FlopCounterMode, fraction of
#      the card's dense bf16 peak (datasheet), peak max_memory_allocated, and the --print_plan VRAM
#      estimate next to the measured peak
#   4. bench/train_speed.py --case sdxl: SDXL-sized random weights, 1024 px, batch 1 and 4, bf16, gradient
#      checkpointing, cached latents and text-encoder outputs, UNet LoRA; the SDXL reference loop likewise
#      (diffusers' train_text_to_image_lora_sdxl.py), the VRAM estimate next to the measured peak
#   5. bench/score_cost.py: the epoch scorer's cost per file on the SD1.5-sized model at 512 px, bf16
#      (UNet samples, FLOPs, seconds, and the same run's training step)
#   6. a short table, last
# Results go to $OUT (train_speed.jsonl, gpu_check.log). Every part has its own timeout, so one hang
# does not eat the session. DRY=1 runs every Python command on the CPU on the tiny model (a few
# minutes on a busy 2-core machine, most of it imports and pytest collection)
# (checks the script, measures nothing).
#
#   OUT=/tmp/out bash bench/gpu_check.sh sd15     # on the GPU machine, from the repository root
#   OUT=/tmp/out bash bench/gpu_check.sh sdxl     # the second call
#   DRY=1 OUT=/tmp/out bash bench/gpu_check.sh    # anywhere: the same commands on the tiny model
if [ -z "${DRY:-}" ]; then
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit;
else export PYTHONPATH=$PWD; fi
set -o pipefail
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/lorasmith_gpu_check}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
JSON="$OUT/train_speed.jsonl"
: > "$LOG"
: > "$JSON"
DRYFLAG=""
if [ -n "${DRY:-}" ]; then DRYFLAG="--dry --threads 1"; fi  # one thread: a shared CPU stays usable

part() {  # part NAME SECONDS COMMAND...: run with a timeout, log everything, never stop the script
  local name="$1" limit="$2"
  shift 2
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=$?
  echo "=== $name: rc=$rc after $((SECONDS - start))s" | tee -a "$LOG"
  return 0
}

WHICH="${1:-sd15}"
if [ "$WHICH" = "sd15" ]; then
part "card" 30 bash -c 'nvidia-smi || echo "no nvidia-smi"; python3 -c "import torch, diffusers, transformers; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else \"\"); print(\"diffusers\", diffusers.__version__, \"transformers\", transformers.__version__)"'
part "gpu tests" 90 python3 -m pytest -q -m gpu tests/ -x -p no:cacheprovider
part "train_speed sd15" 330 python3 bench/train_speed.py --case sd15 --json_out "$JSON" $DRYFLAG
else
part "train_speed sdxl" 360 python3 bench/train_speed.py --case sdxl --json_out "$JSON" $DRYFLAG
if [ -n "${DRY:-}" ]; then COST="--model tiny --resolution 64 --images 2 --train_steps 3 --threads 1";
else COST="--model sd15 --resolution 512 --bf16"; fi
part "score cost" 150 python3 bench/score_cost.py $COST --json_out "$OUT/score_cost.jsonl"
fi
part "table" 15 python3 bench/gpu_table.py "$JSON"
