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
ROWS=" peft-32b recipe-32b fast-32b peft-30b recipe-30b fast-30b recipe-30b-2x8k fast-30b-2x8k "
for row in "$@"; do
  [[ $ROWS == *" $row "* ]] || { echo "ERROR: no row '$row'. Fix: use rows of:$ROWS" >&2; exit 1; }
done
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/bench}

PEFT=(python3 benchmarks/peft_bench.py --gsm8k "$DIR" --work "$WORK" --steps 8 --warmup 2 --tokens 8192)
RECIPE=(python3 benchmarks/sft_bench.py --gsm8k "$DIR" --work "$WORK" --steps 8 --warmup 2 --tokens 8000 --max-length 8192
        --conversations 64 --recipe templates/team.example.yaml --recipe-set sft.gradient_checkpointing=true)
ALL_LINEAR="sft.lora={rank: 32, alpha: 64}"
ATTENTION="sft.lora={rank: 32, alpha: 64, target_modules: [q_proj, k_proj, v_proj, o_proj]}"
FAST=(--recipe-set sft.attn_implementation=sdpa_cudnn --recompute-fit)
ONE_8K=(-- data.train_batch_size=1 data.max_token_len_per_gpu=8192)
TWO_8K=(-- data.train_batch_size=2 data.max_token_len_per_gpu=16384)

failed=()
for row in "$@"; do
  echo "=== $(date +%T) $row"
  case $row in
    peft-32b)        "${PEFT[@]}" --arch qwen3-32b --label peft ;;
    recipe-32b)      "${RECIPE[@]}" --arch qwen3-32b --label recipe-lora --recipe-set "$ALL_LINEAR" "${ONE_8K[@]}" ;;
    fast-32b)        "${RECIPE[@]}" --arch qwen3-32b --label recipe-lora-fast --recipe-set "$ALL_LINEAR" "${FAST[@]}" "${ONE_8K[@]}" ;;
    peft-30b)        "${PEFT[@]}" --arch qwen3-30b-a3b --label peft-attn --targets q_proj,k_proj,v_proj,o_proj ;;
    recipe-30b)      "${RECIPE[@]}" --arch qwen3-30b-a3b --label recipe-lora-attn --recipe-set "$ATTENTION" \
                       --recipe-set sft.use_liger=false "${ONE_8K[@]}" ;;
    fast-30b)        "${RECIPE[@]}" --arch qwen3-30b-a3b --label recipe-lora-attn-fast --recipe-set "$ATTENTION" \
                       --recipe-set sft.use_liger=false "${FAST[@]}" "${ONE_8K[@]}" ;;
    recipe-30b-2x8k) "${RECIPE[@]}" --arch qwen3-30b-a3b --label recipe-lora-attn-2x8k --recipe-set "$ATTENTION" \
                       --recipe-set sft.use_liger=false "${TWO_8K[@]}" ;;
    fast-30b-2x8k)   "${RECIPE[@]}" --arch qwen3-30b-a3b --label recipe-lora-attn-2x8k-fast --recipe-set "$ATTENTION" \
                       --recipe-set sft.use_liger=false "${FAST[@]}" "${TWO_8K[@]}" ;;
  esac || failed+=("$row")  # the next rows still run: a lease is short
done
[ ${#failed[@]} -eq 0 ] || { echo "FAILED: ${failed[*]} (each run's log: $WORK/runs/*/log.txt)" >&2; exit 1; }
