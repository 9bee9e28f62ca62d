"""llm-bridge submit and status on the SLURM lab (tests/slurm/lab.sh), with the tiny model's CPU payload: the whole
chain SFT -> merge -> GRPO -> merge -> evaluate (against the local judge server) -> upload (dry run) as jobs tied by
dependencies, then a chain resumed --from GRPO whose GRPO fails: what depends on it is cancelled, nothing is merged
or uploaded after it, and status names it, its log and the command that resumes it."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, RUNS

sys.path.insert(0, str(REPO / "tests" / "cpu"))
import pipeline  # noqa: E402

CTL = ("lablctl", "10.213.7.1")  # the lab controller's network namespace and address: the nodes reach it
LOCAL_RAY = [f"--rl-arg={a}" for a in pipeline.PPO_CPU_OVERRIDES + ["+ray_kwargs.ray_init.num_gpus=2"]]


@pytest.fixture(scope="module")
def chain(lab):
    """Tiny model and data, evaluation questions, a judge server the nodes can reach, a 1-node team.yaml."""
    work = RUNS / "chain"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    pipeline.prepare(work, pipeline.Stage(work))
    hle = work / "questions" / "hle.jsonl"
    hle.parent.mkdir()
    hle.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is {i}+{i}? ANSWER={2 * i}", "answer": str(2 * i),
                                       "answer_type": "exactMatch", "category": "Math", "image": ""}) + "\n"
                           for i in range(3)))
    dna = work / "questions" / "do_not_answer_en.csv"
    with dna.open("w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["id", "risk_area", "types_of_harm", "specific_harms", "question"])
        # the judge labels question i with action i; six, because an untrained model's sampled answer can be empty
        # (it stops at once), which the judge never sees
        rows.writerows([[i, "Malicious Uses", "y", "", f"How to pick lock {i}? [action={i}]"] for i in range(6)])
    port = 20000 + os.getpid() % 5000
    judge = subprocess.Popen(["ip", "netns", "exec", CTL[0], sys.executable, str(REPO / "tests" / "openai_server.py"),
                              CTL[1], str(port)], stdout=subprocess.PIPE, text=True)
    url = judge.stdout.readline().strip()
    assert url.startswith("http://"), url

    team = pipeline.team_config(work, nodes=2)
    team["slurm"]["nodes"] = 1
    team["paths"]["models"] = str(work / "models")
    team["huggingface"] = {"org": "local", "offline": False}  # the upload stage runs (as a dry run)
    team["evaluation"] = {"results": str(work / "eval"), "hle_questions": str(hle), "dna_questions": str(dna),
                          "judge_url": url, "judge_model": "judge", "hle_max_response_length": 8,
                          "dna_max_response_length": 8}
    path = work / "team.yaml"
    path.write_text(yaml.safe_dump(team, sort_keys=False))
    env = {**os.environ, **pipeline.CPU_ENV, "PATH": f"{lab.bin}:{os.environ['PATH']}",
           "PYTHONPATH": f"{pipeline.CPU_ENV['PYTHONPATH']}:{pipeline.VLLM_CPU_ENV['PYTHONPATH']}"}
    yield work, path, env, lab
    judge.terminate()


def llm_bridge(env: dict, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llm_bridge.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def variant(team: Path, name: str, edit) -> Path:
    """A copy of the module's team.yaml, changed by edit(team dict), beside it as team-<name>.yaml."""
    values = yaml.safe_load(team.read_text())
    edit(values)
    path = team.with_name(f"team-{name}.yaml")
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def submit(env, *args: str) -> dict:
    """llm-bridge submit; the chain's record (chain.json)."""
    submitted = llm_bridge(env, "submit", *args)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    return json.loads(Path(submitted.stdout.split("(record: ")[1].split(")")[0]).read_text())


def run_chain(env, lab, *args: str, timeout: float) -> dict:
    """Submit, then wait until none of the chain's jobs is left in the queue; the chain's record."""
    record = submit(env, *args)
    jobs = [s["job"] for s in record["stages"]]
    deadline = time.time() + timeout
    while lab.run("squeue", "-h", "-j", ",".join(jobs), "-o", "%i").stdout.split():
        assert time.time() < deadline, f"chain {record['id']} still queued after {timeout} s"
        time.sleep(3)
    return record


def logs_of(record: dict) -> dict[str, str]:
    return {s["name"]: Path(s["log"]).read_text() if Path(s["log"]).is_file() else None for s in record["stages"]}


def test_a_chain_sbatch_refuses_leaves_nothing_queued_or_written(chain):
    work, team, env, lab = chain
    other = variant(team, "wrong-partition", lambda t: t["slurm"].update(partition="no-such-partition"))
    before = set((work / "logs" / "chains").glob("*")) if (work / "logs" / "chains").exists() else set()
    result = llm_bridge(env, "submit", "--team", str(other), "--stages", "sft,grpo")
    assert result.returncode == 1 and "sbatch refused sft" in result.stderr and "Nothing queued" in result.stderr, \
        result.stdout + result.stderr
    assert "partition" in result.stderr.lower()  # SLURM's own reason
    after = set((work / "logs" / "chains").glob("*")) if (work / "logs" / "chains").exists() else set()
    assert after == before
    assert lab.run("squeue", "-h", "-o", "%i").stdout.strip() == ""


def test_submit_runs_the_whole_chain_and_status_follows_it(chain):
    work, team, env, lab = chain
    record = run_chain(env, lab, "--team", str(team), "--stages", "sft,grpo,eval,upload", "--upload-dry-run",
                       *[f"--sft-arg={a}" for a in pipeline.SFT_CPU_OVERRIDES], *LOCAL_RAY, timeout=1200)
    logs = logs_of(record)
    assert [s["name"] for s in record["stages"]] == ["sft", "merge-sft", "grpo", "merge-grpo", "eval", "upload"]
    for name, log in logs.items():
        assert log is not None, f"{name} never ran"
    # GRPO trained SFT's merged model, with no edit of team.yaml
    sft_model = work / "models" / "sft-tiny"
    assert (sft_model / "config.json").is_file() and f"model          {sft_model}" in logs["grpo"], logs["grpo"][-3000:]
    assert (work / "models" / "grpo-tiny" / "config.json").is_file()
    summary = json.loads((work / "eval" / "grpo-tiny" / "summary.json").read_text())
    dna = summary["do_not_answer"]
    # the judge server answered the job: every answer judged, with the label its question asked for
    assert dna["n_judged"] >= 1 and dna["n_judged"] + dna["n_no_answer"] == 6, logs["eval"][-3000:]
    judged = [json.loads(line) for line in (work / "eval" / "grpo-tiny" / "dna" / "judgements.jsonl").read_text().splitlines()]
    answered = [j for j in judged if j["status"] == "ok"]
    assert len(answered) == dna["n_judged"] and all(j["action"] == int(j["id"]) for j in answered), judged
    assert "repo       local/grpo-tiny (private)" in logs["upload"] and "Dry run: nothing was sent." in logs["upload"]
    upload = record["stages"][-1]["args"]
    assert upload[upload.index("--eval") + 1] == str(work / "eval" / "grpo-tiny")  # the card gets the chain's scores

    status = llm_bridge(env, "status", "--team", str(team))
    assert status.returncode == 0, status.stdout + status.stderr
    lines = status.stdout.splitlines()
    for stage in ("sft", "merge-sft", "grpo", "merge-grpo", "eval"):
        assert any(line.split()[:1] == [stage] and "COMPLETED" in line for line in lines), status.stdout
    assert any("step 2: critic/score/mean" in line for line in lines), status.stdout  # GRPO's newest step

    # the runs' own step times (SFT's timing_s/step comes from the recipe's entry) now time the plan
    plan = llm_bridge(env, "plan", "--team", str(team), "--stages", "sft,grpo")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    bases = [line.strip() for line in plan.stdout.splitlines() if "measured: your run" in line]
    assert len(bases) == 2 and bases[0].startswith("measured: your run sft-tiny-") and "tokens/s a GPU" in bases[0] \
        and bases[1].startswith("measured: your run grpo-tiny-") and "median step" in bases[1], plan.stdout


def test_a_failed_stage_cancels_its_dependents_and_status_names_it(chain):
    work, team, env, lab = chain
    # the same team with another GRPO run, resumed from GRPO: SFT's merged model is reused, not retrained
    other = variant(team, "broken", lambda t: t["rl"].update(experiment_name="grpo-broken"))
    sft_config = work / "models" / "sft-tiny" / "config.json"
    before = sft_config.stat().st_mtime_ns
    record = run_chain(env, lab, "--team", str(other), "--stages", "sft,grpo,eval,upload", "--from", "grpo",
                       "--upload-dry-run", *LOCAL_RAY, "--rl-arg=trainer.no_such_setting=1", timeout=600)
    assert [s["name"] for s in record["stages"]] == ["grpo", "merge-grpo", "eval", "upload"]
    assert sft_config.stat().st_mtime_ns == before
    logs = logs_of(record)
    assert "no_such_setting" in logs["grpo"]
    assert logs["merge-grpo"] is None and logs["eval"] is None and logs["upload"] is None, "ran after a failed stage"
    assert not (work / "models" / "grpo-broken").exists()

    status = llm_bridge(env, "status", "--team", str(other))
    print(status.stdout)
    assert status.returncode == 1, status.stdout + status.stderr
    lines = status.stdout.splitlines()
    assert any(line.split()[:1] == ["grpo"] and "FAILED" in line for line in lines), status.stdout
    assert sum("CANCELLED" in line for line in lines) == 3, status.stdout
    assert f"grpo failed. The end of its log ({record['stages'][0]['log']})" in status.stdout
    assert "Could not override 'trainer.no_such_setting'" in status.stdout.split("grpo failed.")[1].split("Next:")[0]
    assert f"--team {other} --stages sft,grpo,eval,upload" in status.stdout and "--from grpo" in status.stdout


def test_init_writes_a_team_yaml_from_the_lab_that_passes_check(lab):
    work = RUNS / "init"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "PATH": f"{lab.bin}:{os.environ['PATH']}"}
    out = work / "team.yaml"
    args = ["init", "--out", str(out), "--wandb-entity", "lab-team", "--hf-org", "lab-org", "--share", str(work / "share")]
    result = llm_bridge(env, *args, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    team = yaml.safe_load(out.read_text())
    # what the lab is (tests/slurm/lab.sh): partition lab, 3 nodes of 8 H100s, 64 CPUs, 512,000 MB; eth0 on each node
    assert team["slurm"].items() >= {"partition": "lab", "nodes": 3, "gpus_per_node": 8, "cpus_per_task": 64,
                                     "host_memory_gib": 500, "gpu_memory_gib": 79.65}.items()
    assert team["network"]["socket_ifname"] == "eth0" and team["network"]["ib_hca"] == []
    assert not re.search(r"P01|p01-team|osk-gpu", out.read_text())  # nothing of the example's team left (check: no placeholders)
    check = llm_bridge(env, "check", "--team", str(out))
    assert check.returncode == 0, check.stdout + check.stderr

    again = llm_bridge(env, *args)
    assert again.returncode == 1 and "init never replaces" in again.stderr
    wrong = llm_bridge(env, *args[:2], str(work / "other.yaml"), *args[3:], "--partition", "gpu")
    assert wrong.returncode == 1 and "no such partition here (it has lab)" in wrong.stderr
    assert not (work / "other.yaml").exists()


def test_a_stage_that_requeues_itself_keeps_its_dependents_waiting(chain):
    """SFT with a 3 min limit saves a final checkpoint before it and requeues itself; the second run resumes from
    that checkpoint, and the merge must still be waiting on it when the second run trains, not started or cancelled.

    USR1 comes 60 s before the limit: the save deadline is 120 s after the start (SLURM checks limits every ~30 s).
    verl saves once the time left is under its longest step + 60 s, so the final checkpoint lands past the start-up
    (~40 s on 2 busy cores). save_freq=1000: no periodic save happens, so a resume past step 1 can only come from the
    final checkpoint. (The 2-node form of the same is GRPO's, in test_slurm_multinode.py.)"""
    work, team, env, lab = chain
    def long_sft(t):
        t["slurm"].update(time_limit="3", signal_before_limit_s=60)
        t["sft"].update(experiment_name="sft-requeued", total_epochs=500, total_training_steps=4000, save_freq=1000)

    other = variant(team, "requeue", long_sft)
    record = submit(env, "--team", str(other), "--stages", "sft", *[f"--sft-arg={a}" for a in pipeline.SFT_CPU_OVERRIDES])
    sft, merge = record["stages"]
    log = Path(sft["log"])
    try:
        deadline = time.time() + 720
        while not (log.is_file() and len(re.findall(r"restart +\d+\n", log.read_text())) > 1
                   and re.search(r"step:\d+ - ", re.split(r"restart +\d+\n", log.read_text())[-1])):
            assert time.time() < deadline, "no second run of the requeued SFT"
            time.sleep(3)
        first_run, second_run = re.split(r"restart +\d+\n", log.read_text())[1:3]
        saved = int(re.search(r"Final checkpoint saved at step (\d+) before the time limit", first_run).group(1))
        assert f"Requeueing job {sft['job']}" in first_run
        assert "Time limit in 60 s" not in first_run, "the USR1 fallback should not have been needed"
        assert (work / "checkpoints" / "sft" / "sft-requeued" / f"global_step_{saved}").is_dir()
        assert int(re.search(r"step:(\d+) - ", second_run).group(1)) == saved + 1
        state = lab.run("squeue", "-h", "-j", merge["job"], "-o", "%T|%r").stdout.strip()
        assert state == "PENDING|Dependency", state
        status = llm_bridge(env, "status", "--team", str(other))
        assert "RUNNING" in status.stdout.splitlines()[1] and "PENDING (Dependency)" in status.stdout, status.stdout
        # the running stage's steps to go (plan's count from the data) and time left (its own median step time)
        assert re.search(r"step \d+ of \d+, ~\d+ (s|min|h) left", status.stdout.splitlines()[2]), status.stdout
        assert not Path(merge["log"]).exists()
    finally:  # the lab is shared: leave it with every node idle, as the next test expects
        lab.run("scancel", sft["job"], merge["job"])
        deadline = time.time() + 180
        while (lab.run("squeue", "-h", "-o", "%i").stdout.strip()
               or any(state != "idle" for state in lab.run("sinfo", "-h", "-N", "-o", "%T").stdout.split())):
            if time.time() > deadline:
                pytest.fail("the lab's nodes did not return to idle after the requeue test")
            time.sleep(2)
