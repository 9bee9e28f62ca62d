#!/bin/bash
# Rendered by `llm-bridge render` (llm_bridge 0.1.0) from templates/team.example.yaml (sha256 679198239761).
# Do not edit: change the team config or templates/, then run `llm-bridge render` again.
#
# An interactive shell on one compute node of partition P01, with the same resources
# as the single-node jobs. Install environments and run scripts by hand from there, never on the login node.
#
#   bash train/scripts/compute_node.sh                  # default time limit 1-00:00:00
#   bash train/scripts/compute_node.sh --time=02:00:00  # extra srun options go last
set -euo pipefail

if [[ -n "${SLURM_JOB_ID:-}" ]]; then
  echo "ERROR: already inside SLURM job ${SLURM_JOB_ID} (on $(hostname))." >&2
  echo "       Fix: exit this shell first, or run your command here directly." >&2
  exit 1
fi

exec srun --partition=P01 --nodes=1 --ntasks-per-node=1 \
  --gpus-per-node=8 --cpus-per-task=240 \
  --mem=0 --time=1-00:00:00 "$@" --pty bash -i
