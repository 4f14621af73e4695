#!/usr/bin/env bash
# (the first command installs the wheels the GPU machine lacks, from .whl/, as the session requires)
# One GPU session's measurements for issue 26, in one go (about 10 minutes on an H200):
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
#   5. a short table, last
# Results go to $OUT (train_speed.jsonl, gpu_check.log). Every part has its own timeout, so one hang
# does not eat the session. DRY=1 runs every Python command on the CPU on the tiny model (a few
# minutes on a busy 2-core machine, most of it imports and pytest collection)
# (checks the script, measures nothing).
#
#   OUT=/tmp/out bash bench/gpu_check.sh          # on the GPU machine, from the repository root
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

part "card" 30 bash -c 'nvidia-smi || echo "no nvidia-smi"; python3 -c "import torch, diffusers, transformers; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else \"\"); print(\"diffusers\", diffusers.__version__, \"transformers\", transformers.__version__)"'
part "gpu tests" 90 python3 -m pytest -q -m gpu tests/ -x -p no:cacheprovider
part "train_speed sd15" 330 python3 bench/train_speed.py --case sd15 --json_out "$JSON" $DRYFLAG
part "train_speed sdxl" 360 python3 bench/train_speed.py --case sdxl --json_out "$JSON" $DRYFLAG
part "table" 15 python3 bench/gpu_table.py "$JSON"
