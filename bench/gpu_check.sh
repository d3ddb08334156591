#!/usr/bin/env bash
# The GPU check: azr's CUDA-only paths run once on one GPU, in order of risk, in under 8 minutes on an
# H200, every figure written to one text file (FIGURES, default $OUT/gpu_check.txt or ./gpu_check.txt).
#
#   1. bench/gpu_check.py all: CUDA-graph decode against eager (greedy and T=1, staggered stops), the
#      weight refresh seen by captured graphs, the update's forward/backward under autocast against
#      fp32 with peak memory, the KV cache budget against the memory free after one AdamW step, and
#      decode tokens/s (graph vs eager, 1/8/64 rows, 256/8192 context, split-key attention on/off);
#   2. bench/sampler.py against transformers' generate at batch 1 and 64 (roofline at 4.8 TB/s);
#   3. azr.py on a tiny random checkpoint: torchrun --fsdp for 2 steps, --resume to step 3, and one
#      step without --fsdp with the default KV cache size.
#
#   bench/gpu_check.sh [FIGURES]          on the GPU
#   bench/gpu_check.sh --cpu [FIGURES]    the same steps on tiny configs on the CPU (a dry run)
#
# Each step has a time limit; a step that fails or runs out of time writes FAILED and the tail of its
# stderr into the file, and the next step runs. The exit status is the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
if [ "${1:-}" = "--cpu" ]; then
    DEVICE=cpu
    shift
fi
FIGURES="${1:-${OUT:-.}/gpu_check.txt}"
WORK="$(mktemp -d)"
FAILED=0
: >"$FIGURES"

step() {  # step SECONDS TITLE COMMAND...: run COMMAND with a time limit, its stdout into FIGURES
    local limit=$1 title=$2
    shift 2
    echo "== $title" | tee -a "$FIGURES"
    local start=$SECONDS
    timeout "$limit" "$@" 2>"$WORK/stderr" | tee -a "$FIGURES"
    local status=${PIPESTATUS[0]}
    if [ "$status" -eq 0 ]; then
        echo "ok, $((SECONDS - start)) s" | tee -a "$FIGURES"
    else
        FAILED=$((FAILED + 1))
        { echo "FAILED: exit $status after $((SECONDS - start)) s (124: over the ${limit} s limit); stderr ends:"
          tail -n 15 "$WORK/stderr"; } | tee -a "$FIGURES"
    fi
}

# Small self-play settings for the azr.py runs: a random model never writes a well-formed answer, so
# these runs check the machinery (sampling, sandbox, update, checkpoint, resume), not learning.
RUN_FLAGS=(--batch-size 4 --n-solve-samples 2 --seed-size 2 --seed-max-rounds 1 --max-prompt-tokens 4096
           --max-response-tokens 64 --exec-workers 2 --micro-batch-size 2 --checkpoint-every 1)
if [ "$DEVICE" = cuda ]; then
    CHECK_FLAGS=(--device cuda)
    SAMPLER_FLAGS=(--model data/configs/qwen2.5-0.5b.json --device cuda --dtype bfloat16 --batch-sizes 1,64
                   --new-tokens 256 --bandwidth-gbs 4800)
    LIMITS=(200 80 70 50 50)  # 450 s: with the header, checkpoint and metrics steps under 8 minutes
else
    CHECK_FLAGS=(--device cpu --tiny)
    SAMPLER_FLAGS=(--model "$WORK/tiny/config.json" --device cpu --batch-sizes 1,2 --new-tokens 4)
    RUN_FLAGS+=(--device cpu)
    LIMITS=(300 120 300 300 300)
fi

{ echo "azr GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  python -c "import torch, transformers; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'transformers', transformers.__version__)"
} | tee -a "$FIGURES"

python bench/gpu_check.py checkpoint "$WORK/tiny" | tee -a "$FIGURES"
step "${LIMITS[0]}" "decode, weight refresh, training step, cache budget, speed" python bench/gpu_check.py all "${CHECK_FLAGS[@]}"
step "${LIMITS[1]}" "bench/sampler.py against transformers" python bench/sampler.py "${SAMPLER_FLAGS[@]}"
step "${LIMITS[2]}" "torchrun azr.py --fsdp, 2 steps" python -m torch.distributed.run --standalone --nproc_per_node=1 \
    azr.py --fsdp --model "$WORK/tiny" --out "$WORK/fsdp" --steps 2 "${RUN_FLAGS[@]}"
step "${LIMITS[3]}" "torchrun azr.py --resume to step 3" python -m torch.distributed.run --standalone --nproc_per_node=1 \
    azr.py --resume "$WORK/fsdp" --steps 3
step "${LIMITS[4]}" "azr.py without --fsdp, 1 step, default KV cache size" python azr.py --model "$WORK/tiny" \
    --out "$WORK/plain" --steps 1 "${RUN_FLAGS[@]}"
python bench/gpu_check.py metrics "$WORK/fsdp" "$WORK/plain" | tee -a "$FIGURES"
echo "$FAILED failed steps; figures in $FIGURES" | tee -a "$FIGURES"
rm -rf "$WORK"
exit "$FAILED"
