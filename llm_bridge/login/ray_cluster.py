"""`llm-bridge ray up | submit | stop`: the interactive multi-node mode.

`up` submits the rendered mutinode_ppo/ray_cluster.sbatch and waits for the address file it writes;
`submit` runs the rendered submit_ppo.sh, which starts the verl driver inside that job; `stop` scancels
it (its exit trap stops Ray on every node and removes the address file). SLURM's own clients do the work.
"""

import re
import subprocess
import sys
import time
from pathlib import Path

from llm_bridge.login.config import TeamConfig
from llm_bridge.login.render import config_hash

CLUSTER_SCRIPT = Path("mutinode_ppo") / "ray_cluster.sbatch"
SUBMIT_SCRIPT = Path("mutinode_ppo") / "submit_ppo.sh"


class RayCommandError(RuntimeError):
    pass


def _logs(config: TeamConfig) -> Path:
    return Path(config.paths.logs)


def rendered_script(team_file: Path, rendered: Path, relative: Path) -> Path:
    """A rendered script, checked to come from this very team file (its header names the config's hash)."""
    script = rendered / relative
    if not script.is_file():
        raise RayCommandError(f"{script} does not exist. Fix: llm-bridge render --team {team_file} --out {rendered}")
    want = config_hash(team_file)
    have = re.search(r"\(sha256 ([0-9a-f]{12})\)", script.read_text())
    if not have or have.group(1) != want:
        raise RayCommandError(f"{script} was rendered from another version of {team_file}. "
                              f"Fix: llm-bridge render --team {team_file} --out {rendered}")
    return script


def job_state(job: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip()


def running_clusters(config: TeamConfig) -> list[tuple[str, Path]]:
    files = sorted(_logs(config).glob("ray-cluster-*.address"), key=lambda p: p.stat().st_mtime, reverse=True)
    jobs = [(p.stem.removeprefix("ray-cluster-"), p) for p in files]
    return [(job, path) for job, path in jobs if job_state(job) == "RUNNING"]


def up(config: TeamConfig, team_file: Path, rendered: Path) -> int:
    script = rendered_script(team_file, rendered, CLUSTER_SCRIPT)
    result = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RayCommandError(f"sbatch failed: {result.stderr.strip()}")
    job = result.stdout.strip().split(";")[0]
    address = _logs(config) / f"ray-cluster-{job}.address"
    print(f"Submitted Ray cluster job {job}; waiting for {address}")
    while not address.exists():
        state = job_state(job)
        if state not in ("PENDING", "CONFIGURING", "RUNNING"):
            raise RayCommandError(f"job {job} ended ({state or 'gone'}) before the cluster was ready; "
                                  f"see {_logs(config)}/ray-cluster-{job}.out")
        time.sleep(2)
    print(address.read_text().strip())
    print(f"Ready. Run a driver with: llm-bridge ray submit --team {team_file}")
    return 0


def submit(team_file: Path, rendered: Path, overrides: list[str]) -> int:
    script = rendered_script(team_file, rendered, SUBMIT_SCRIPT)
    return subprocess.run(["bash", str(script), *overrides]).returncode


def stop(config: TeamConfig, timeout_s: float = 180) -> int:
    clusters = running_clusters(config)
    if not clusters:
        print("No running Ray cluster job found.")
        return 0
    for job, address in clusters:
        subprocess.run(["scancel", job], check=True)
        deadline = time.time() + timeout_s
        while job_state(job) and time.time() < deadline:
            time.sleep(2)
        print(f"Stopped Ray cluster job {job}" + ("" if not address.exists() else f" (left {address})"))
    return 0


def main(action: str, config: TeamConfig, team_file: Path, rendered: Path, overrides: list[str]) -> int:
    try:
        if action == "up":
            return up(config, team_file, rendered)
        if action == "submit":
            return submit(team_file, rendered, overrides)
        return stop(config)
    except RayCommandError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1

