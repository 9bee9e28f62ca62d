"""`llm-bridge init`: a new team's team.yaml, from what the cluster tells and the two values only the team knows.

SLURM says the partition, its nodes, their GPUs, CPUs and memory, and its time limit (sinfo); a short job on one
compute node says the network (the interface of its default route, the InfiniBand/RoCE adapters and RoCE v2's GID
index) and the GPU's memory (nvidia-smi). The W&B entity and the Hugging Face org come from flags. Everything else
is templates/team.example.yaml, comments included, so the file reads like the example. The result is checked
like `llm-bridge check` before it is written; an existing file is never replaced.
"""

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from llm_bridge.data import atomic_write
from llm_bridge.login.loader import EXAMPLE

# One GPU's memory as `check` plans it, by SLURM's GPU type, where nvidia-smi cannot be asked (GiB, nvidia-smi's total)
GPU_MEMORY_GIB = {"h100": 79.65, "h200": 139.8, "a100": 79.25, "h800": 79.65}
PROBE = r"""
echo "route=$(ip -o route get 1.1.1.1 2>/dev/null | sed -n 's/.* dev \([^ ]*\).*/\1/p')"
for dev in /sys/class/infiniband/*; do
  [[ -e "$dev" ]] || continue
  name=$(basename "$dev")
  state=$(cat "$dev/ports/1/state" 2>/dev/null)
  layer=$(cat "$dev/ports/1/link_layer" 2>/dev/null)
  gid=""
  for t in "$dev"/ports/1/gid_attrs/types/*; do
    [[ "$(cat "$t" 2>/dev/null)" == "RoCE v2" ]] || continue
    i=$(basename "$t")
    [[ "$(cat "$dev/ports/1/gids/$i" 2>/dev/null)" == 0000:0000:0000:0000:0000:ffff:* ]] && { gid=$i; break; }
  done
  echo "hca=$name|$state|$layer|$gid"
done
command -v nvidia-smi >/dev/null && echo "gpu_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)"
true
"""


class InitError(RuntimeError):
    pass


@dataclass
class Cluster:
    partition: str
    nodes: int
    gpus_per_node: int
    gpu_type: str | None
    cpus: int
    memory_mib: int
    time_limit: str | None
    socket_ifname: str | None = None
    ib_hca: list[str] = field(default_factory=list)
    ib_gid_index: int | None = None
    gpu_memory_gib: float | None = None
    sources: dict[str, str] = field(default_factory=dict)


def _run(argv: list[str], timeout: int = 120) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise InitError(f"SLURM's {argv[0]} is not on PATH here. Fix: run llm-bridge init on the cluster's login node") from None
    except subprocess.TimeoutExpired:
        raise InitError(f"`{' '.join(argv[:4])} ...` gave no answer in {timeout} s (the partition busy?). "
                        "Fix: run init again when a node is free, or pass --no-probe and fill network: by hand") from None
    if result.returncode != 0:
        raise InitError(f"`{' '.join(argv)}` failed: {result.stderr.strip()[-500:]}")
    return result.stdout


def parse_gres(gres: str) -> tuple[int, str | None]:
    """GPUs per node and their type from sinfo's %G, e.g. gpu:h100:8(S:0-1) or gpu:8; (0, None) without GPUs."""
    for item in gres.split(","):
        found = re.match(r"gpu(?::([A-Za-z0-9_-]+))?:(\d+)", item.strip())
        if found:
            return int(found.group(2)), (found.group(1) or "").lower() or None
    return 0, None


def parse_probe(text: str) -> dict:
    """The compute node's answers (PROBE's key=value lines)."""
    out: dict = {"hcas": []}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "route" and value:
            out["socket_ifname"] = value
        elif key == "hca":
            name, state, layer, gid = (value.split("|") + ["", "", ""])[:4]
            if "ACTIVE" in state:
                out["hcas"].append((name, layer, gid))
        elif key == "gpu_mib" and value.strip().isdigit():
            out["gpu_mib"] = int(value.strip())
    return out


def partitions() -> list[str]:
    return sorted({p.strip().rstrip("*") for p in _run(["sinfo", "-h", "-o", "%P"]).split() if p.strip()})


def read_cluster(partition: str | None, probe: bool = True) -> Cluster:
    names = partitions()
    if partition is None:
        if len(names) != 1:
            raise InitError(f"this account sees {len(names)} partitions ({', '.join(names) or 'none'}). "
                            "Fix: --partition <your team's partition>")
        partition = names[0]
    elif partition not in names:
        raise InitError(f"--partition {partition}: SLURM has no such partition here (it has {', '.join(names)}). "
                        "Fix: --partition one of those")
    rows = [line.split("|") for line in _run(["sinfo", "-h", "-N", "-p", partition, "-o", "%N|%G|%c|%m"]).splitlines()]
    nodes = sorted({r[0] for r in rows})
    gpus, gpu_type = min(parse_gres(r[1]) for r in rows)
    if gpus == 0:
        raise InitError(f"partition {partition}'s nodes advertise no GPUs (gres {rows[0][1]!r}). "
                        "Fix: --partition <the team's GPU partition>")
    limit = _run(["sinfo", "-h", "-p", partition, "-o", "%l"]).split()[0]
    cluster = Cluster(partition, len(nodes), gpus, gpu_type, min(int(r[2]) for r in rows),
                      min(int(r[3]) for r in rows), None if limit in ("infinite", "UNLIMITED", "n/a") else limit)
    cluster.sources.update(partition="sinfo", nodes=f"sinfo ({', '.join(nodes)})", gpus=f"sinfo gres {rows[0][1]}")
    if probe:
        answers = parse_probe(_run(["srun", "-p", partition, "-N1", "-n1", "--gpus-per-node=1", "--time=5",
                                    "bash", "-c", PROBE], timeout=600))
        cluster.socket_ifname = answers.get("socket_ifname")
        cluster.ib_hca = [name for name, _, _ in answers["hcas"]]
        roce = [gid for _, layer, gid in answers["hcas"] if layer == "Ethernet" and gid]
        cluster.ib_gid_index = int(roce[0]) if roce else None
        if "gpu_mib" in answers:
            cluster.gpu_memory_gib = round(answers["gpu_mib"] / 1024, 2)
            cluster.sources["gpu_memory_gib"] = "nvidia-smi on a compute node"
        cluster.sources["network"] = "a compute node (ip route, /sys/class/infiniband)"
    if cluster.gpu_memory_gib is None and gpu_type in GPU_MEMORY_GIB:
        cluster.gpu_memory_gib = GPU_MEMORY_GIB[gpu_type]
        cluster.sources["gpu_memory_gib"] = f"the {gpu_type.upper()}'s memory"
    return cluster


def _scalar(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()


def set_value(text: str, dotted: str, value, note: str | None = None) -> str:
    """text with section.key's value replaced (a commented-out `# key:` line is uncommented; None comments the line
    out), its comment kept unless note replaces it."""
    section, key = dotted.split(".")
    lines = text.split("\n")
    start = lines.index(f"{section}:") if f"{section}:" in lines else next(
        i for i, line in enumerate(lines) if line.startswith(f"{section}:"))
    for i in range(start + 1, len(lines)):
        line = lines[i]
        if line and not line.startswith(" "):
            break
        found = re.match(rf"^  (# )?{re.escape(key)}:(\s*)([^#]*?)(\s*)(#.*)?$", line)
        if not found:
            continue
        comment = f"# {note}" if note else (found.group(5) or "")
        body = f"{key}: {_scalar(value)}" if value is not None else f"# {key}:"
        pad = max(1, 31 - len(body)) if comment else 0
        lines[i] = f"  {body}{' ' * pad}{comment}".rstrip()
        return "\n".join(lines)
    raise InitError(f"templates/team.example.yaml has no {dotted} line to set")


def team_yaml(cluster: Cluster, wandb_entity: str, hf_org: str, share: Path) -> str:
    """The example's text with the cluster's and the team's values."""
    text = EXAMPLE.read_text()
    header_end = text.index("\nslurm:")
    text = ("# team.yaml written by `llm-bridge init` from this cluster (sinfo, a compute node) and the example's\n"
            "# settings; check it with `llm-bridge check --team team.yaml`.\n" + text[header_end:])
    edits = [
        ("slurm.partition", cluster.partition, None),
        ("slurm.nodes", min(cluster.nodes, 64), f"nodes in {cluster.partition}; single-node jobs use 1"),
        ("slurm.nodelist", None, None),
        ("slurm.gpus_per_node", cluster.gpus_per_node, None),
        ("slurm.host_memory_gib", cluster.memory_mib // 1024, "one node's memory, GiB (sinfo)"),
        ("slurm.cpus_per_task", cluster.cpus, "all CPUs of a node (sinfo)"),
        ("paths.logs", str(share / "logs"), None),
        ("paths.hf_home", str(share / "hf_cache"), None),
        ("network.socket_ifname", cluster.socket_ifname, None),
        ("network.ib_hca", cluster.ib_hca, None),
        ("network.ib_gid_index", cluster.ib_gid_index, "RoCE v2 (read on a compute node)" if cluster.ib_gid_index is not None else None),
        ("wandb.entity", wandb_entity, None),
        ("huggingface.org", hf_org, None),
    ]
    if cluster.gpu_memory_gib is not None:
        edits.append(("slurm.gpu_memory_gib", cluster.gpu_memory_gib, f"one GPU's memory ({cluster.sources['gpu_memory_gib']})"))
    if cluster.time_limit is not None:
        edits.append(("slurm.time_limit", cluster.time_limit, "the partition's limit (sinfo)"))
    for dotted, value, note in edits:
        text = set_value(text, dotted, value, note)
    return text


def init(out: Path, partition: str | None, wandb_entity: str, hf_org: str, share: Path, probe: bool) -> int:
    from llm_bridge.login.validate import validate
    from llm_bridge.problems import errors, report

    if out.exists():
        raise InitError(f"{out} exists; init never replaces a team's file. Fix: --out another path, or move it away")
    if not share.is_absolute():
        raise InitError(f"--share {share}: give an absolute folder (SLURM opens the logs there before any shell runs)")
    cluster = read_cluster(partition, probe)
    text = team_yaml(cluster, wandb_entity, hf_org, share)
    (share / "logs").mkdir(parents=True, exist_ok=True)  # SLURM writes each job's log there: check wants it
    staged = out.with_name(f".{out.name}.init")
    staged.write_text(text)
    try:
        config, problems = validate(staged)
        if config is None or errors(problems):
            print(report(str(out), problems))
            raise InitError(f"the team.yaml init made does not pass check (above); nothing written to {out}")
        if out.exists():
            raise InitError(f"{out} appeared meanwhile; init never replaces a team's file")
        atomic_write(out, lambda tmp: Path(tmp).write_text(text))
    finally:
        staged.unlink(missing_ok=True)
    print(f"Wrote {out} for partition {cluster.partition}:")
    for name, value in (("nodes", cluster.nodes), ("gpus_per_node", cluster.gpus_per_node),
                        ("gpu_memory_gib", cluster.gpu_memory_gib), ("cpus_per_task", cluster.cpus),
                        ("host_memory_gib", cluster.memory_mib // 1024), ("socket_ifname", cluster.socket_ifname),
                        ("ib_hca", ", ".join(cluster.ib_hca) or "none"), ("ib_gid_index", cluster.ib_gid_index),
                        ("logs", share / "logs"), ("hf_home", share / "hf_cache")):
        print(f"  {name:<16} {value}")
    print("The training settings are the example's (Qwen2.5-0.5B on GSM8K): edit sft: and rl: for your model and data,\n"
          f"then `llm-bridge check --team {out}`.")
    return 0
