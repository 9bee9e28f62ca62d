"""The rendered multi-node scripts under a real SLURM (tests/slurm/lab.sh: slurmctld + 3 slurmd, each node in
its own network namespace with 8 fake GPUs), with the CPU payload of the single-node pipeline:
tiny-model SFT over gloo across 2 nodes, GRPO through Ray across 2 nodes, and the failures a team meets.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, RUNS, hidden_from_nodes  # noqa: F401  the lab fixture lives in conftest

sys.path.insert(0, str(REPO / "tests" / "cpu"))
import pipeline  # noqa: E402

SFT_CPU = pipeline.SFT_CPU_OVERRIDES
PPO_CPU = pipeline.PPO_CPU_OVERRIDES


@pytest.fixture(scope="module")
def work():
    """Tiny model, data and the rendered scripts of a 2-node team config for the lab."""
    work = RUNS / "multinode"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    stage = pipeline.Stage(work)
    pipeline.prepare(work, stage)
    pipeline.render(work, pipeline.team_config(work, nodes=2, rl_model=work / "tiny" / "model"))
    return work


def job_log(work: Path, job: str) -> str:
    """The job's SLURM output; empty while it has not started."""
    paths = list((work / "logs").glob(f"*-{job}.out"))
    return paths[0].read_text() if paths else ""


def leftovers(job: str) -> list[str]:
    """Processes of this job anywhere on the machine: the nodes' PID namespaces are visible from here."""
    out = subprocess.run(["pgrep", "-af", f"ray_{job}([^0-9]|$)|rdzv-id={job}([^0-9]|$)"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def job_processes(job: str, pattern: str) -> list[int]:
    """PIDs matching pattern that run in this job (SLURM_JOB_ID in their environment): other tests' runs on this
    machine, outside the lab, have the same command lines."""
    pids = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    mine = []
    for pid in pids:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:  # ended meanwhile
            continue
        if f"SLURM_JOB_ID={job}".encode() in environ:
            mine.append(int(pid))
    return mine


BYSTANDER = "^/tmp/raylet 3600"  # the bystander job's process on each node (its srun lines carry the same words)


@pytest.fixture
def bystander(lab, work):
    """Another job on every node, with a process that `ray stop` and `pkill raylet` take for Ray: a Ray job's
    teardown must stop its own Ray and leave this one running (`ray stop --force` on a node stops them all)."""
    out = lab.run("sbatch", "--parsable", "-N3", "--ntasks-per-node=1", "-c1", "-o", str(work / "logs" / "bystander-%j.out"),
                  "--wrap", "srun bash -c 'cp /bin/sleep /tmp/raylet && exec /tmp/raylet 3600'")
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip()
    wait_for(lambda: len(job_processes(job, BYSTANDER)) == 3, 60, "the bystander job on every node")
    yield job
    lab.run("scancel", job)


def still_running(lab, bystander: str) -> bool:
    state = lab.run("squeue", "-h", "-j", bystander, "-o", "%T").stdout.strip()
    return state == "RUNNING" and len(job_processes(bystander, BYSTANDER)) == 3


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def test_a_checkout_the_nodes_cannot_see_is_named_with_the_reason(lab, tmp_path):
    """The lab fixture runs this check on the repository itself; here it meets a file under the host's /tmp."""
    assert hidden_from_nodes(lab, REPO / "pyproject.toml") is None
    host_only = Path("/tmp") / f"bridge-visible-{os.getpid()}"
    host_only.write_text("on the host only")
    try:
        reason = hidden_from_nodes(lab, host_only)
    finally:
        host_only.unlink()
    assert reason and "mounts its own empty /tmp" in reason and "clone the repository outside /tmp" in reason


def test_lab_is_a_real_cluster(lab):
    out = lab.run("srun", "-N2", "--gpus-per-node=8", "bash", "-c", 'echo "$(hostname) $CUDA_VISIBLE_DEVICES"')
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.split("\n")[:2]) == ["node1 0,1,2,3,4,5,6,7", "node2 0,1,2,3,4,5,6,7"]
    print(f"\nlab bring-up: {lab.bringup_s:.1f} s")


def test_multinode_sft_over_srun_torchrun(lab, work):
    start = time.time()
    proc, job = lab.submit(work / "rendered" / "mutinode_sft" / "run_sft_multinode.sbatch", *SFT_CPU, env=pipeline.CPU_ENV)
    assert proc.wait(timeout=600) == 0, job_log(work, job)[-5000:]
    assert re.search(r"allocator\s+expandable_segments:True", job_log(work, job))  # the SFT scripts' allocator default
    print(f"\n2-node SFT wall time: {time.time() - start:.0f} s")
    step = work / "checkpoints" / "sft" / "sft-tiny-2nodes" / "global_step_4"
    assert sorted(p.name for p in step.glob("model_world_size_*")) == [f"model_world_size_4_rank_{r}.pt" for r in range(4)]
    [metrics] = (work / "logs").glob("sft-tiny-2nodes-*.metrics.jsonl")
    losses = [json.loads(line)["data"]["train/loss"] for line in metrics.read_text().splitlines() if "train/loss" in line]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert leftovers(job) == []


def test_multinode_lora_sft_of_qwen3(lab, work):
    """LoRA SFT of a tiny Qwen3 on 2 nodes x 2 ranks: each rank saves its shard of the adapter alone, and the merge
    folds it into the base as PEFT would (logits to 1e-4)."""
    import build_tiny
    import torch
    from test_merge import _logits, bridge_merge

    base = build_tiny.build_qwen3(work / "tiny" / "model", work / "tiny" / "qwen3")
    team = pipeline.team_config(work, nodes=2, rl_model=work / "tiny" / "model")
    team["sft"].update(experiment_name="lora-qwen3", model=str(base),  # the multi-node script adds -2nodes
                       lora={"rank": 4, "alpha": 8, "base_dtype": "fp32"})
    rendered = pipeline.render(work, team, "rendered-lora")
    proc, job = lab.submit(rendered / "mutinode_sft" / "run_sft_multinode.sbatch", *SFT_CPU, "optim.lr=1e-2",
                           "trainer.total_training_steps=2", env=pipeline.CPU_ENV)
    assert proc.wait(timeout=600) == 0, job_log(work, job)[-5000:]
    run = work / "checkpoints" / "sft" / "lora-qwen3-2nodes"
    shards = sorted((run / "global_step_2").glob("model_world_size_4_rank_*.pt"))
    assert len(shards) == 4 and all(all("lora_" in k for k in torch.load(s, weights_only=False)) for s in shards)
    [metrics] = (work / "logs").glob("lora-qwen3-2nodes-*.metrics.jsonl")
    losses = [json.loads(line)["data"]["train/loss"] for line in metrics.read_text().splitlines() if "train/loss" in line]
    assert len(losses) == 2 and losses[1] < losses[0]

    merged = work / "models" / "lora-qwen3-2nodes"
    result = bridge_merge("--checkpoint", run, "--out", merged, "--base", base)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert torch.allclose(_logits(merged), _logits(base, merged / "lora_adapter"), atol=1e-4)
    assert leftovers(job) == []


def test_worker_that_never_joins_gives_a_clear_error(lab, work):
    team = pipeline.team_config(work, nodes=2, rl_model=work / "tiny" / "model")
    team["ray"] = {"join_timeout_s": 30}
    rendered = pipeline.render(work, team, out="rendered-short-join")
    # node2 cannot reach the head's GCS port: its Ray worker never registers
    block = ["ip", "-n", "labnode2", "rule", "add", "ipproto", "tcp", "dport", "6379", "blackhole"]
    subprocess.run(block, check=True)
    try:
        start = time.time()
        proc, job = lab.submit(rendered / "mutinode_ppo" / "run_ppo_multinode.sbatch", *PPO_CPU, env=pipeline.CPU_ENV)
        assert proc.wait(timeout=300) != 0
        elapsed = time.time() - start
    finally:
        subprocess.run([*block[:4], "del", *block[5:]], check=False)
    log = job_log(work, job)
    assert "ERROR: after 30 s Ray has 1/2 nodes" in log or "ERROR: a Ray worker exited before joining" in log, log[-3000:]
    if "after 30 s" in log:
        assert "Missing: node2" in log
    assert elapsed < 240, "the job should fail at the join deadline, not run to its time limit"
    wait_for(lambda: leftovers(job) == [], 60, "Ray processes to end")


def runs(log: str) -> list[str]:
    """The job log split at each requeue: one part per run."""
    return re.split(r"restart +\d+\n", log)[1:]


def first_step(run: str) -> int | None:
    match = re.search(r"step:(\d+) - ", run)
    return int(match.group(1)) if match else None


def cancel(lab, proc, job):
    lab.run("scancel", job)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()  # sbatch --wait can miss the end of a job cancelled while requeued


def test_multinode_grpo_trains_saves_before_the_time_limit_resumes_and_fails_cleanly_when_its_driver_dies(
        lab, work, bystander):
    """One 2-node GRPO job through its whole life (each multi-node Ray run costs ~4 CPU minutes of start-up on the
    CI's 2 cores, so one job shows all of it): it trains over Ray on both nodes, saves a final checkpoint ahead of
    the time limit and requeues itself, the second run resumes from that checkpoint, and when its driver is killed
    the job fails and its teardown stops its own Ray on both nodes and nothing else."""
    team = pipeline.team_config(work, nodes=2, rl_model=work / "tiny" / "model")
    # the first GRPO step on the lab comes ~2 min after the job starts (measured): a 4:30 limit, warned 60 s ahead,
    # leaves ~90 s of room before the final checkpoint is due (a 4 min limit left none: it saved at step 1 just in time)
    team["slurm"].update(time_limit="4:30", signal_before_limit_s=60)
    # the job must run until its limit: its reward sleeps (paced_reward.py), so the wait costs little CPU
    team["rl"].update(experiment_name="grpo-requeue", save_freq=1000, reward_function=str(pipeline.HERE / "paced_reward.py"))
    rendered = pipeline.render(work, team, out="rendered-requeue-grpo")
    proc, job = lab.submit(rendered / "mutinode_ppo" / "run_ppo_multinode.sbatch", *PPO_CPU,
                           "trainer.total_epochs=100", "trainer.total_training_steps=1000", env=pipeline.CPU_ENV)
    try:
        wait_for(lambda: len(runs(job_log(work, job))) > 1 and first_step(runs(job_log(work, job))[1]), 900,
                 "the requeued run's first step")
        first_run, second_run = runs(job_log(work, job))[:2]
        assert "Ray cluster ready: 2 nodes, 4 GPUs" in first_run, first_run[-3000:]
        print("\n" + first_run[first_run.index("Ray cluster ready"):].splitlines()[0])
        # the trainer loop runs in a Ray actor, maybe on the other node: deadline and stop file reach it through Ray
        saved = int(re.search(r"Final checkpoint saved at step (\d+) before the time limit", first_run).group(1))
        assert f"Requeueing job {job}" in first_run and "Time limit in 60 s" not in first_run
        actor = work / "checkpoints" / "grpo" / "grpo-requeue-2nodes" / f"global_step_{saved}" / "actor"
        assert len(list(actor.glob("model_world_size_4_rank_*.pt"))) == 4
        assert first_step(second_run) == saved + 1
        grads = [json.loads(line)["data"]["actor/grad_norm"] for metrics in (work / "logs").glob("grpo-requeue-2nodes-*.metrics.jsonl")
                 for line in metrics.read_text().splitlines() if "actor/grad_norm" in line]
        assert len(grads) >= saved and all(g > 0 for g in grads), grads

        drivers = job_processes(job, "llm_bridge.job.verl_ppo")
        assert drivers, "the requeued run's driver"
        for pid in drivers:
            os.kill(pid, signal.SIGKILL)
        assert proc.wait(timeout=300) != 0
        assert "Stopping Ray on 2 node(s)" in runs(job_log(work, job))[1]
    finally:
        cancel(lab, proc, job)
    wait_for(lambda: leftovers(job) == [], 60, "Ray and torchrun processes to end")
    assert still_running(lab, bystander), "the job's teardown stopped another job's processes"


def test_interactive_cluster_up_submit_stop(lab, work, bystander):
    env = {**os.environ, **pipeline.CPU_ENV, "PATH": f"{lab.bin}:{os.environ['PATH']}"}
    ray = [sys.executable, "-m", "llm_bridge.cli", "ray"]
    where = ["--team", str(work / "team-rendered.yaml"), "--rendered", str(work / "rendered")]
    up = subprocess.run([*ray, "up", *where], env=env, capture_output=True, text=True, timeout=420, cwd=REPO)
    assert up.returncode == 0, up.stdout + up.stderr
    [address] = (work / "logs").glob("ray-cluster-*.address")
    job = address.stem.removeprefix("ray-cluster-")
    assert f"CLUSTER_JOB_ID={job}" in up.stdout
    assert re.search(r"RAY_ADDRESS=10\.213\.7\.1[1-3]:6379", up.stdout), up.stdout  # the head: a lab node
    try:
        ckpt = work / "ckpt-interactive"
        driver = subprocess.run([*ray, "submit", *where, *PPO_CPU, f"trainer.default_local_dir={ckpt}"],
                                env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
        assert driver.returncode == 0, (driver.stdout + driver.stderr)[-5000:]
        assert (ckpt / "global_step_2" / "actor").is_dir()
        assert lab.run("squeue", "-h", "-j", job, "-o", "%T").stdout.strip() == "RUNNING", "the cluster outlives its driver"
    finally:
        stop = subprocess.run([*ray, "stop", *where], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert stop.returncode == 0 and f"Stopped Ray cluster job {job}" in stop.stdout, stop.stdout + stop.stderr
    assert not address.exists()
    wait_for(lambda: leftovers(job) == [], 60, "Ray processes to end")
    assert still_running(lab, bystander), "stopping the cluster stopped another job's processes"
