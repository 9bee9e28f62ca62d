#!/usr/bin/env bash
# LoRA SFT speed of the teams' big-model shapes on one GPU: the plain PEFT loop against the recipe
# (docs/benchmarks.md, "LoRA の SFT", rows L1-L3), and the recipe with its two speed settings for big models:
# attn_implementation: sdpa_cudnn and recompute_layers as `llm-bridge check` suggests for this GPU's memory.
#
# For: one H200 (every row) or one H100 80 GB (the 30B-A3B rows; the 32B shape's plain loop needs 83 GiB).
# Time: 2-4 min a row (a 32B model's random initialization on the GPU takes ~1 min; 8 steps, 2 of them warm-up).
# Needs: the benchmark environment (benchmarks/offline_env.sh) and a directory with GSM8K's train.jsonl.
#
#   bash benchmarks/lora_sft_speed.sh DIR ROW...        e.g.  bash benchmarks/lora_sft_speed.sh ~/gsm8k peft-32b fast-32b
#
# Rows; compare only rows measured on the same machine in one lease:
#   peft-32b          the plain loop (benchmarks/peft_bench.py): all-linear LoRA r32, one 8,192-token sequence a step
#   recipe-32b        L1: templates/team.example.yaml + LoRA r32 alpha 64 + gradient checkpointing (flash-attn 2, Liger)
#   fast-32b          recipe-32b with sdpa_cudnn and the fitted recompute_layers
#   peft-30b          the plain loop on the Qwen3-30B-A3B shape, LoRA on attention (q/k/v/o)
#   recipe-30b        L2: the same LoRA, Liger off (check advises it for MoE LoRA)
#   fast-30b          recipe-30b with sdpa_cudnn and the fitted recompute_layers
#   recipe-30b-2x8k   L3: two 8k-token samples a step, packed into one micro-batch
#   fast-30b-2x8k     recipe-30b-2x8k with sdpa_cudnn and the fitted recompute_layers
# Each row prints a JSON object and a Markdown row and appends them to WORK/results.jsonl (WORK: /tmp/bench).
set -euo pipefail

DIR=${1:?"usage: bash benchmarks/lora_sft_speed.sh DIR ROW... (DIR: a directory with GSM8K's train.jsonl)"}
shift
[ $# -gt 0 ] || { echo "ERROR: no row named. Fix: name one or more rows, e.g. peft-32b fast-32b (the header lists them)" >&2; exit 1; }
[ -f "$DIR/train.jsonl" ] || { echo "ERROR: $DIR/train.jsonl not found. Fix: pass the directory that holds GSM8K's train.jsonl" >&2; exit 1; }
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/bench}

PEFT=(python3 benchmarks/peft_bench.py --gsm8k "$DIR" --work "$WORK" --steps 8 --warmup 2 --tokens 8192)
RECIPE=(python3 benchmarks/sft_bench.py --gsm8k "$DIR" --work "$WORK" --steps 8 --warmup 2 --tokens 8000 --max-length 8192
        --conversations 64 --recipe templates/team.example.yaml --recipe-set sft.gradient_checkpointing=true)
MOE_ATTENTION=(--arch qwen3-30b-a3b --recipe-set "sft.lora={rank: 32, alpha: 64, target_modules: [q_proj, k_proj, v_proj, o_proj]}"
               --recipe-set sft.use_liger=false)
FAST=(--recipe-set sft.attn_implementation=sdpa_cudnn --recompute-fit)
ONE_8K=(-- data.train_batch_size=1 data.max_token_len_per_gpu=8192)
TWO_8K=(-- data.train_batch_size=2 data.max_token_len_per_gpu=16384)

# One function a row (its name with _ for -). A fast-X row is recipe-X with FAST: recipe_* take the label's suffix,
# then options of their own.
peft_32b()        { "${PEFT[@]}" --arch qwen3-32b --label peft; }
peft_30b()        { "${PEFT[@]}" --arch qwen3-30b-a3b --label peft-attn --targets q_proj,k_proj,v_proj,o_proj; }
recipe_32b()      { "${RECIPE[@]}" --arch qwen3-32b --label "recipe-lora$1" --recipe-set "sft.lora={rank: 32, alpha: 64}" \
                      "${@:2}" "${ONE_8K[@]}"; }
recipe_30b()      { "${RECIPE[@]}" "${MOE_ATTENTION[@]}" --label "recipe-lora-attn$1" "${@:2}" "${ONE_8K[@]}"; }
recipe_30b_2x8k() { "${RECIPE[@]}" "${MOE_ATTENTION[@]}" --label "recipe-lora-attn-2x8k$1" "${@:2}" "${TWO_8K[@]}"; }

row_function() {  # the function that runs row $1, or nothing
  local name=${1//-/_}
  [[ $name =~ ^(peft|recipe|fast)_ ]] || return 0
  name=${name/#fast_/recipe_}
  if declare -F "$name" >/dev/null; then echo "$name"; fi
}

for row in "$@"; do
  [ -n "$(row_function "$row")" ] || { echo "ERROR: no row '$row'. Fix: use rows named in this script's header" >&2; exit 1; }
done
failed=()
for row in "$@"; do
  echo "=== $(date +%T) $row"
  case $row in
    fast-*)   "$(row_function "$row")" -fast "${FAST[@]}" ;;
    recipe-*) "$(row_function "$row")" "" ;;
    *)        "$(row_function "$row")" ;;
  esac || failed+=("$row")  # the next rows still run: a lease is short
done
[ ${#failed[@]} -eq 0 ] || { echo "FAILED: ${failed[*]} (each run's log: $WORK/runs/*/log.txt)" >&2; exit 1; }
