"""Run rendered scripts to their last line with every outside command stubbed, so that every value in them is
expanded by a real bash exactly as on the cluster: what a value would run, it runs here.

Stubs (one dispatcher under many names) stand in for SLURM, module, torchrun, Ray, python3, llm-bridge and the
network tools: they record their arguments and answer what the scripts ask (one node, a RUNNING job, an IP).
`srun` and `env` hand over to the command they wrap, so values inside those commands are expanded too.
"""

import json
import os
import subprocess
import time
from pathlib import Path

STUBBED = ["srun", "sbatch", "scontrol", "squeue", "scancel", "torchrun", "ray", "llm-bridge", "module", "conda", "nvcc",
           "python3", "python", "pip", "hostname", "ip", "sleep", "nvidia-smi"]

DISPATCHER = r"""#!/bin/bash
printf '%s\0' "$(basename "$0")" "$@" >> "${STUB_LOG}"; printf '\n' >> "${STUB_LOG}"
case "$(basename "$0")" in
  srun)
    for arg in "$@"; do [[ "${arg}" == --pty ]] && exit 0; done
    while [[ $# -gt 0 ]]; do
      case "$1" in -w|-J|-p|-N|-n) shift 2 ;; -*) shift ;; *) break ;; esac
    done
    [[ $# -gt 0 ]] && exec "$@"
    ;;
  scontrol) [[ "$1" == show ]] && printf '%s\n' ${STUB_NODES} ;;
  squeue) [[ "$*" == *%T* ]] && echo RUNNING; [[ "$*" == *%e* ]] && echo 2099-01-01T00:00:00 ;;
  python3|python) if [[ "${1:-}" == - ]]; then cat >/dev/null; n=$(wc -w <<<"${STUB_NODES}"); echo "${n} $((n * STUB_GPUS))"; echo ${STUB_NODES}; fi ;;
  hostname) echo 10.0.0.1 ;;
  ip) echo "2: eth0    inet 10.0.0.1/24 brd 10.0.0.255 scope global eth0" ;;
esac
exit 0
"""


def stub_config(example: dict, root: Path) -> dict:
    """The example team config pointed at root: a module init file, a venv, local paths, offline W&B."""
    from conftest import as_our_team

    team = json.loads(as_our_team(json.dumps(example)))
    (root / "modules.sh").write_text("")
    (root / "venv" / "bin").mkdir(parents=True, exist_ok=True)
    (root / "venv" / "bin" / "activate").write_text("")
    team["environment"] = {"module_init": str(root / "modules.sh"), "modules": example["environment"]["modules"],
                           "venv": str(root / "venv")}
    team["paths"] = {name: str(root / name) for name in ("checkpoints", "logs", "hf_home")}
    team["wandb"]["mode"] = "offline"
    return team


class Stubs:
    def __init__(self, root: Path, gpus_per_node: int):
        self.root, self.bin, self.log = root, root / "stub-bin", root / "stub-calls"
        self.bin.mkdir(parents=True, exist_ok=True)
        dispatcher = self.bin / "_stub"
        dispatcher.write_text(DISPATCHER)
        dispatcher.chmod(0o755)
        for name in STUBBED:
            link = self.bin / name
            if not link.exists():
                link.symlink_to(dispatcher)
        self.gpus = gpus_per_node
        self.model = root / "model"
        self.model.mkdir(exist_ok=True)
        (self.model / "config.json").write_text("{}")

    def args_for(self, script: Path) -> list[str]:
        if script.name in ("eval_model.sbatch", "eval_model_multinode.sbatch"):
            return [str(self.model), "name"]
        if script.name == "generate.sbatch":
            return [str(self.model), str(self.root / "data.parquet"), str(self.root / "out.jsonl")]
        if script.name == "merge_model.sbatch":
            return [str(self.root / "checkpoint"), str(self.root / "merged")]
        if script.name == "upload_model.sbatch":
            return [str(self.model), "name", "--dry-run"]
        return []

    def run(self, script: Path, logs: Path, cwd: Path, repo: Path, nodes: tuple[str, ...] = ("node1",)
            ) -> subprocess.CompletedProcess:
        """Run one rendered script under the stubs as a batch job on `nodes`; the caller checks the exit code."""
        logs.mkdir(parents=True, exist_ok=True)
        (logs / "ray-cluster-123.address").write_text(
            "CLUSTER_JOB_ID=123\nHEAD_NODE=node1\nRAY_ADDRESS=10.0.0.1:6379\nN_NODES=1\nGPUS_PER_NODE=8\n")
        env = {
            "PATH": f"{self.bin}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.root / "home"),
            "STUB_LOG": str(self.log),
            "STUB_GPUS": str(self.gpus),
            "SLURM_JOB_ID": "123",
            "SLURM_JOB_NODELIST": ",".join(nodes),
            "SLURM_NNODES": str(len(nodes)),
            "STUB_NODES": " ".join(nodes),
            "SLURM_CPUS_PER_TASK": "4",
            "SLURM_SUBMIT_DIR": str(repo),
            "SLURM_JOB_END_TIME": str(int(time.time()) + 3600),
            "OPENAI_API_KEY": "not-a-key",
            "LANG": "C.UTF-8",
        }
        if script.name == "compute_node.sh":  # run from the login node, outside any job
            env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
        return subprocess.run(["bash", str(script), *self.args_for(script)], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)

    def calls(self) -> list[list[str]]:
        """Every stubbed command run so far, as its argv."""
        if not self.log.exists():
            return []
        return [line.rstrip("\0").split("\0") for line in self.log.read_text().split("\n") if line]

    def run_all(self, out: Path, logs: Path, cwd: Path, repo: Path) -> dict[str, subprocess.CompletedProcess]:
        scripts = sorted(p for p in out.rglob("*") if p.is_file() and os.access(p, os.X_OK))
        return {str(p.relative_to(out)): self.run(p, logs, cwd, repo) for p in scripts}
