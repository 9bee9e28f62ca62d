#!/usr/bin/env bash
# System packages the tests need beyond Python: a real SLURM (controller, node daemon, clients) with munge,
# and iproute2/util-linux for the lab cluster's network namespaces (tests/slurm/lab.sh). Debian, as root.
set -euo pipefail
if [[ $(id -u) -ne 0 ]]; then
  echo "ERROR: the SLURM lab cluster needs root (network namespaces, slurmd)." >&2
  echo "       Fix: run the tests as root, e.g. in a disposable VM or container." >&2
  exit 1
fi
packages=(slurmctld slurmd slurm-client munge iproute2 util-linux procps)
if ! dpkg -s "${packages[@]}" >/dev/null 2>&1; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${packages[@]}"
fi
