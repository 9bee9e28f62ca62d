#!/bin/bash
# Rendered by `llm-bridge render` (llm_bridge 0.1.0) from templates/team.example.yaml (sha256 679198239761).
# Do not edit: change the team config or templates/, then run `llm-bridge render` again.
#
# Interactive mode, driver side: runs verl.trainer.main_ppo (llm_bridge.job.verl_ppo) on the head node of a running Ray cluster job
# (ray_cluster.sbatch), inside that job's allocation, with this terminal's output. Normally started by
# `llm-bridge ray submit --team team.yaml [overrides ...]`; CLUSTER_JOB_ID=<id> picks a cluster when several run.
set -euo pipefail

# ---------------------------------------------------------------------------------------------
# Environment (team config: environment, network, huggingface, wandb)
# ---------------------------------------------------------------------------------------------
# Module and conda scripts read unset variables, so nounset is off while they run.
set +u
# shellcheck source=/dev/null
source "/etc/profile.d/modules.sh"
module reset
module load nccl/2.22.3 hpcx/2.18.1-gcc-cuda12/hpcx-mt miniconda/24.7.1-py311
# shellcheck source=/dev/null
source "/home/appli/miniconda3/24.7.1-py311/etc/profile.d/conda.sh"
conda activate "${HOME}/conda_env"
set -u

# SLURM on GPU nodes may also set ROCR_VISIBLE_DEVICES; Ray and verl refuse it next to CUDA_VISIBLE_DEVICES.
unset ROCR_VISIBLE_DEVICES

export NCCL_SOCKET_IFNAME=enp25s0np0
export GLOO_SOCKET_IFNAME=enp25s0np0
export NCCL_IB_HCA=mlx5_0,mlx5_1,mlx5_2,mlx5_3,mlx5_4,mlx5_5,mlx5_8,mlx5_9
export NCCL_IB_GID_INDEX=3
export NCCL_DEBUG=WARN
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1

export HF_HOME="/home/Competition2025/P01/shareP01/hf_cache"
# The Hub token stays each member's own: `hf auth login` writes ~/.cache/huggingface/token, which HF_HOME above
# would otherwise hide (huggingface_hub looks for $HF_HOME/token). Never copy a token into the shared cache.
export HF_TOKEN_PATH="${HF_TOKEN_PATH:-${HOME}/.cache/huggingface/token}"
export HF_HUB_OFFLINE=0

export WANDB_ENTITY=p01-team
export WANDB_PROJECT=llm-bridge
export WANDB_MODE=online
export WANDB_DIR="/home/Competition2025/P01/shareP01/logs"
# An online run without a login dies minutes into the allocation; fail now instead.
if [[ -z "${WANDB_API_KEY:-}" ]] && ! grep -qs "api.wandb.ai" "${HOME}/.netrc"; then
  echo "ERROR: wandb.mode is online but this node finds no W&B login." >&2
  echo "       Fix: run 'wandb login' once on the login node, or set wandb.mode: offline in team.yaml." >&2
  exit 1
fi

# Settings banner: what a person checks first when a job misbehaves. The environment is never dumped.
banner() { printf '  %-14s %s\n' "$@"; }

# ---------------------------------------------------------------------------------------------
# The cluster: the newest address file whose job is still running
# ---------------------------------------------------------------------------------------------
ADDRESS_FILE=""
mapfile -t CANDIDATES < <(find "/home/Competition2025/P01/shareP01/logs" -maxdepth 1 -name 'ray-cluster-*.address' -printf '%T@ %p\n' 2>/dev/null \
  | sort -rn | cut -d' ' -f2-)
for candidate in "${CANDIDATES[@]}"; do
  job=$(basename "${candidate}" .address)
  job=${job#ray-cluster-}
  if [[ -n "${CLUSTER_JOB_ID:-}" && "${job}" != "${CLUSTER_JOB_ID}" ]]; then continue; fi
  if [[ "$(squeue -h -j "${job}" -o %T 2>/dev/null)" == "RUNNING" ]]; then ADDRESS_FILE=${candidate}; break; fi
done
if [[ -z "${ADDRESS_FILE}" ]]; then
  echo "ERROR: no running Ray cluster job found (no live /home/Competition2025/P01/shareP01/logs/ray-cluster-*.address)." >&2
  echo "       Fix: start one with: llm-bridge ray up --team team.yaml" >&2
  exit 1
fi
# shellcheck source=/dev/null
source "${ADDRESS_FILE}"
export RAY_ADDRESS

EXPERIMENT=grpo-qwen2.5-0.5b-gsm8k-3nodes
# FSDP checkpoints are per world size: multi-node runs keep their own directory.
CKPT_DIR="${HOME}/training/grpo/${EXPERIMENT}"

# ---------------------------------------------------------------------------------------------
# Final checkpoint before the time limit. The deadline goes in MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP
# (Unix seconds), the variable of verl's own "ESI" save; llm_bridge.job.verl_sft and llm_bridge.job.verl_ppo
# save and stop once less than their longest step + 60 s is left (llm_bridge/job/deadline.py).
# The deadline is when USR1 comes: the job's end minus 300 s.
# ---------------------------------------------------------------------------------------------
export_save_deadline() {  # <job id>
  local end=""
  if [[ "$1" == "${SLURM_JOB_ID:-}" && -n "${SLURM_JOB_END_TIME:-}" ]]; then
    end=${SLURM_JOB_END_TIME}
  else
    end=$(date -d "$(squeue -h -j "$1" -o %e 2>/dev/null)" +%s 2>/dev/null) || end=""
  fi
  if [[ "${end}" =~ ^[0-9]+$ ]]; then
    export MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP=$((end - 300))
    echo "Time limit: a final checkpoint is saved by $(date -d "@${MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP}" '+%F %T')"
  else
    echo "NOTE: no end time for job $1 (no time limit?): no final checkpoint before a limit"
  fi
}
export_save_deadline "${CLUSTER_JOB_ID}"

RUN_NAME="${EXPERIMENT}-${SLURM_JOB_ID:-local}-$(date +%Y%m%d-%H%M%S)"
# Metrics of every step, one JSON line each (verl's "file" logger).
export VERL_FILE_LOGGER_PATH="/home/Competition2025/P01/shareP01/logs/${RUN_NAME}.metrics.jsonl"
# Hydra's run directory (resolved config, trainer log); by default it litters the working directory with outputs/.
HYDRA_RUN_DIR="/home/Competition2025/P01/shareP01/logs/hydra/${RUN_NAME}"
# rl.use_liger: verl imports liger-kernel only once the model is built, minutes into the job; check now.
if ! python3 -c "import liger_kernel" 2>/dev/null; then
  echo "ERROR: rl.use_liger is true in team.yaml, but $(command -v python3) has no liger-kernel." >&2
  echo "       Fix: rerun install_env.sbatch (it installs liger-kernel), or set rl.use_liger: false in team.yaml." >&2
  exit 1
fi
# PyTorch's allocator grows mapped segments instead of caching fixed-size blocks (docs/benchmarks.md):
#   SFT: the same speed, and 0.5B at 32768 tokens/GPU reserved 38 instead of 64 GiB of an H100.
#   GRPO: vLLM's sampler holds a steady 0.4-0.8 GiB outside its pool instead of up to 18 GiB that changes
#   with every rollout (four H200s), which `llm-bridge check` counts on; generation speed stays within
#   step-to-step noise.
# vLLM turns it off while it builds its own pool; verl does the same around the weight sync. A value exported
# before sbatch wins.
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
PPO_ARGS=(
  hydra.run.dir="${HYDRA_RUN_DIR}"
  algorithm.adv_estimator=grpo
  algorithm.use_kl_in_reward=False
  algorithm.rollout_correction.bypass_mode=True
  data.train_files="${HOME}/data/gsm8k/train.parquet"
  data.val_files="${HOME}/data/gsm8k/test.parquet"
  data.train_batch_size=96
  data.max_prompt_length=512
  data.max_response_length=1024
  data.filter_overlong_prompts=True
  data.truncation=error
  actor_rollout_ref.model.path="Qwen/Qwen2.5-0.5B-Instruct"
  actor_rollout_ref.model.use_remove_padding=True
  actor_rollout_ref.model.enable_gradient_checkpointing=False
  +actor_rollout_ref.model.override_config.attn_implementation=flash_attention_2
  actor_rollout_ref.model.use_liger=True
  actor_rollout_ref.actor.strategy=fsdp
  actor_rollout_ref.actor.optim.lr=1e-06
  actor_rollout_ref.actor.ppo_mini_batch_size=48
  actor_rollout_ref.actor.use_dynamic_bsz=True
  actor_rollout_ref.actor.ppo_max_token_len_per_gpu=32768
  actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4
  actor_rollout_ref.actor.use_kl_loss=False
  actor_rollout_ref.actor.kl_loss_coef=0.001
  actor_rollout_ref.actor.kl_loss_type=low_var_kl
  actor_rollout_ref.actor.entropy_coeff=0.0
  actor_rollout_ref.ref.strategy=fsdp
  actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8
  actor_rollout_ref.rollout.name=vllm
  actor_rollout_ref.rollout.n=8
  actor_rollout_ref.rollout.tensor_model_parallel_size=1
  actor_rollout_ref.rollout.gpu_memory_utilization=0.5
  actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8
  trainer.project_name=llm-bridge
  trainer.experiment_name="${EXPERIMENT}"
  trainer.default_local_dir="${CKPT_DIR}"
  trainer.total_epochs=15
  # verl 0.9.1 saves no checkpoint at all unless save_freq > 0.
  trainer.save_freq=20
  trainer.test_freq=10
  trainer.max_actor_ckpt_to_keep=2
  trainer.max_critic_ckpt_to_keep=2
  trainer.resume_mode=auto
  'trainer.logger=["console","file","wandb"]'
  # The file logger runs in a Ray actor, possibly on another node: hand it the path through Ray.
  +ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH="${VERL_FILE_LOGGER_PATH}"
  # vLLM's workers and the FSDP workers may run on other nodes, whose Ray did not start from this shell.
  +ray_kwargs.ray_init.runtime_env.env_vars.PYTORCH_CUDA_ALLOC_CONF="'${PYTORCH_CUDA_ALLOC_CONF}'"
  # verl's actor and reference workers compute log-probs too: patch them where they run (llm_bridge/job/verl_patches.py)
  +ray_kwargs.ray_init.runtime_env.worker_process_setup_hook=llm_bridge.job.verl_patches.apply
)
if [[ -n "${MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP:-}" ]]; then
  # So does the trainer loop, which saves before the deadline (quoted: Ray wants string env vars).
  PPO_ARGS+=(
    +ray_kwargs.ray_init.runtime_env.env_vars.MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP="'${MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP}'"
    +ray_kwargs.ray_init.runtime_env.env_vars.BRIDGE_STOP_FILE="${BRIDGE_STOP_FILE:-}"
  )
fi

echo "=== GRPO on Ray cluster job ${CLUSTER_JOB_ID} (3 nodes) ==="
banner ray "${RAY_ADDRESS}"
banner model "Qwen/Qwen2.5-0.5B-Instruct"
banner checkpoints "${CKPT_DIR}"
banner allocator "${PYTORCH_CUDA_ALLOC_CONF}"

# The driver runs inside the cluster job's allocation (SLURM tracks it; scancel ends it) on the head node.
exec srun --jobid="${CLUSTER_JOB_ID}" --overlap --nodes=1 --ntasks=1 -w "${HEAD_NODE}" \
  env -u ROCR_VISIBLE_DEVICES python3 -m llm_bridge.job.verl_ppo "${PPO_ARGS[@]}" \
  trainer.nnodes="${N_NODES}" trainer.n_gpus_per_node="${GPUS_PER_NODE}" "$@"
