#!/usr/bin/env bash
# A real SLURM cluster on one machine, for the tests: Debian's slurmctld + slurmd + munge, a controller
# and NODES compute nodes, each node in its own network namespace (own IP, hostname, /tmp and PID space),
# each with 8 fake GPUs (GRES backed by /dev/null, so SLURM sets CUDA_VISIBLE_DEVICES as on a GPU node).
#
#   tests/slurm/lab.sh start      # ~15 s; prints the environment to use the cluster
#   tests/slurm/lab.sh stop       # stops every daemon started here, removes the namespaces
#   tests/slurm/lab.sh env        # SLURM_CONF=... PATH=... for clients (sbatch, squeue, ...)
#
# Needs root and: apt-get install slurmctld slurmd slurm-client munge iproute2 util-linux procps.
# The /24 below exists only inside the namespaces; a blackhole route keeps it off every real network.
set -euo pipefail

LAB=${LAB_DIR:-/var/tmp/llm-bridge-slurm-lab}
NODES=${LAB_NODES:-3}
NET=10.213.7
CTL_NS=lablctl

node_ns() { echo "labnode$1"; }

write_configs() {
  mkdir -p "$LAB"/{etc,state,log,bin,dev,run}
  for i in $(seq 0 7); do ln -sf /dev/null "$LAB/dev/nvidia$i"; done
  {
    echo "127.0.0.1 localhost"
    echo "$NET.1 ctl"
    for n in $(seq 1 "$NODES"); do echo "$NET.$((10 + n)) node$n"; done
  } > "$LAB/etc/hosts"
  local proctrack=proctrack/linuxproc
  [[ -d /sys/fs/cgroup/freezer ]] && proctrack=proctrack/cgroup
  cat > "$LAB/etc/slurm.conf" <<EOF
ClusterName=lab
SlurmctldHost=ctl($NET.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits this long before it may start again (slurm.conf(5): 120 s by default), and then
# for the next pass of the main scheduler (60 s by default): the tests' requeued jobs restart ~2 min sooner
AuthInfo=cred_expire=30
SchedulerParameters=sched_interval=5
ProctrackType=$proctrack
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LAB/log/jobcomp.txt
MinJobAge=4
ReturnToService=2
KillWait=5
InactiveLimit=0
MpiDefault=none
StateSaveLocation=$LAB/state
SlurmdSpoolDir=$LAB/spool/%n
SlurmctldPidFile=$LAB/run/slurmctld.pid
SlurmdPidFile=$LAB/spool/%n/slurmd.pid
SlurmctldLogFile=$LAB/log/slurmctld.log
SlurmdLogFile=$LAB/log/slurmd-%n.log
EOF
  for n in $(seq 1 "$NODES"); do
    echo "NodeName=node$n NodeAddr=$NET.$((10 + n)) CPUs=64 RealMemory=512000 Gres=gpu:h100:8 State=UNKNOWN" >> "$LAB/etc/slurm.conf"
  done
  echo "PartitionName=lab Nodes=node[1-$NODES] Default=YES MaxTime=INFINITE State=UP" >> "$LAB/etc/slurm.conf"
  echo "AutoDetect=off" > "$LAB/etc/gres.conf"
  echo "NodeName=node[1-$NODES] Name=gpu Type=h100 File=$LAB/dev/nvidia[0-7]" >> "$LAB/etc/gres.conf"
  printf 'CgroupPlugin=cgroup/v1\nConstrainCores=no\nConstrainRAMSpace=no\nConstrainDevices=no\n' > "$LAB/etc/cgroup.conf"
  # Clients run in the controller's namespace from the host, and directly inside the nodes. bash, not sh:
  # dash would drop the exported shell functions (BASH_FUNC_*) that jobs pass to their srun steps.
  for cmd in sbatch srun squeue scontrol scancel sinfo; do
    cat > "$LAB/bin/$cmd" <<EOF
#!/bin/bash
export SLURM_CONF=$LAB/etc/slurm.conf
if [ -z "\$(ip netns identify \$\$ 2>/dev/null)" ]; then exec ip netns exec $CTL_NS /usr/bin/$cmd "\$@"; fi
exec /usr/bin/$cmd "\$@"
EOF
    chmod +x "$LAB/bin/$cmd"
  done
}

start_munge() {
  [[ -f /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
  mkdir -p /run/munge && chown munge:munge /run/munge
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged </dev/null >/dev/null 2>&1
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  fi
}

start_network() {
  ip netns add "$CTL_NS"
  ip -n "$CTL_NS" link set lo up
  ip -n "$CTL_NS" link add labbr0 type bridge
  ip -n "$CTL_NS" addr add "$NET.1/24" dev labbr0
  ip -n "$CTL_NS" link set labbr0 up
  mkdir -p "/etc/netns/$CTL_NS" && cp "$LAB/etc/hosts" "/etc/netns/$CTL_NS/hosts"
  for n in $(seq 1 "$NODES"); do
    local ns; ns=$(node_ns "$n")
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip link add "labv$n" type veth peer name "labp$n"
    ip link set "labv$n" netns "$ns"
    ip link set "labp$n" netns "$CTL_NS"
    ip -n "$CTL_NS" link set "labp$n" master labbr0 up
    ip -n "$ns" link set "labv$n" name eth0
    ip -n "$ns" addr add "$NET.$((10 + n))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via "$NET.1"
  done
  ip route add blackhole "$NET.0/24" 2>/dev/null || true
}

start_daemons() {
  export SLURM_CONF=$LAB/etc/slurm.conf
  # Close inherited descriptors: a daemon holding a CI runner's pipe would hang the runner.
  ip netns exec "$CTL_NS" unshare --uts sh -c "hostname ctl; exec /usr/sbin/slurmctld -i" </dev/null >/dev/null 2>&1
  for n in $(seq 1 "$NODES"); do
    mkdir -p "$LAB/spool/node$n"
    # nsenter, not `ip netns exec`: the latter remounts /sys and slurmd loses the cgroup tree.
    setsid nsenter --net="/run/netns/$(node_ns "$n")" \
      unshare --uts --mount --pid --fork --mount-proc --kill-child \
      bash -c "hostname node$n
               mount --bind '$LAB/etc/hosts' /etc/hosts
               mount -t tmpfs tmpfs /tmp
               /usr/sbin/slurmd -D -N node$n &
               trap 'kill -TERM \$!; wait' TERM INT
               wait" </dev/null >"$LAB/log/node$n.console" 2>&1 &
  done
}

wait_idle() {
  local deadline=$((SECONDS + 60))
  while (( SECONDS < deadline )); do
    local idle
    idle=$("$LAB/bin/sinfo" -h -N -o '%N %T' 2>/dev/null | grep -c ' idle$' || true)
    if [[ "$idle" == "$NODES" ]]; then return 0; fi
    sleep 0.5
  done
  echo "lab: nodes not idle after 60 s:" >&2
  "$LAB/bin/sinfo" -N >&2 || true
  tail -n 20 "$LAB"/log/*.log >&2 || true
  return 1
}

stop() {
  if [[ -f "$LAB/run/slurmctld.pid" ]]; then
    local ctld; ctld=$(cat "$LAB/run/slurmctld.pid")
    kill "$ctld" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 "$ctld" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$ctld" 2>/dev/null || true
  fi
  # Each node's `unshare --kill-child` (it ignores TERM): when it dies, its PID 1 and so everything on that node die.
  pkill -KILL -f -- "--kill-child bash -c hostname node[0-9]+.*$LAB/etc/hosts" 2>/dev/null || true
  for _ in $(seq 20); do pgrep -f -- "--kill-child bash -c hostname node[0-9]+.*$LAB/etc/hosts" >/dev/null || break; sleep 0.5; done
  for n in $(seq 1 "$NODES"); do ip netns del "$(node_ns "$n")" 2>/dev/null || true; done
  ip netns del "$CTL_NS" 2>/dev/null || true
  ip route del blackhole "$NET.0/24" 2>/dev/null || true
  rm -rf "$LAB/state" "$LAB/spool" "$LAB/run"
}

case "${1:-}" in
  start)
    stop
    write_configs
    start_munge
    start_network
    start_daemons
    wait_idle
    echo "SLURM_CONF=$LAB/etc/slurm.conf PATH=$LAB/bin:\$PATH"
    ;;
  stop) stop ;;
  env) echo "SLURM_CONF=$LAB/etc/slurm.conf PATH=$LAB/bin:\$PATH" ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
