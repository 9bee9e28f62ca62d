"""benchmarks/learn_bench.py, issue 38's GPU entrypoint, runs end to end on a CPU (--cpu): data, a random model,
the rendered SFT script, merge, the rendered GRPO script, merge, held-out accuracy, table and curves. A smoke test
that keeps the entrypoint working between GPU leases; that the recipe teaches is tests/test_grpo_learns.py's."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_the_learning_benchmark_runs_its_stages_on_a_cpu(tmp_path):
    def learn_bench(work: Path, *arms: str) -> list[str]:
        return [sys.executable, "benchmarks/learn_bench.py", "--work", str(work), "--cpu", "--size", "tiny",
                "--vocab", "512", "--train", "600", "--test", "32", "--train-steps", "0", "--test-steps", "0",
                "--max-length", "128", "--sft-steps", "20", "--sft-batch", "16", "--sft-lr", "3e-3", "--grpo-steps", "2",
                "--prompts", "8", "--n", "4", "--grpo-lr", "1e-3", "--samples", "2", "--arms", *arms]

    # --arms "" stops after the SFT model's accuracy; a later run with arms reuses that model
    sft_only = subprocess.run(learn_bench(tmp_path, ""), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert sft_only.returncode == 0, sft_only.stdout[-3000:] + sft_only.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert [row["model"] for row in results["rows"]] == ["SFT"] and results["times_s"]["sft"] > 0
    # --samples 2: two answers a held-out prompt at temperature 1, graded as a mean and as pass@2
    [sft] = results["rows"]
    assert 0 <= sft["sampled_accuracy"] <= sft["pass_at_2"] <= 1, sft
    assert len((tmp_path / "samples2-sft.jsonl").read_text().splitlines()) == 64
    assert "pass@2" in (tmp_path / "results.md").read_text()
    # an arm at its own learning rate (ARM@LR), through --together's path (two runs at once: the Stage test below)
    argv = learn_bench(tmp_path, "recipe@2e-3", "--together", "--updates", "4")
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[sft]" not in result.stdout and "[grpo-recipe-lr2e-3]" in result.stdout, result.stdout[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert [row["model"] for row in results["rows"]] == ["SFT", "GRPO (recipe-lr2e-3)"]
    rl = yaml.safe_load((tmp_path / "team-rendered-grpo-recipe-lr2e-3.yaml").read_text())["rl"]
    assert rl["lr"] == 2e-3 and rl["ppo_mini_batch_size"] == 2  # --updates 4: four optimizer steps over 8 prompts
    assert all(0 <= row["accuracy"] <= 1 for row in results["rows"]) and results["rows"][1]["steps"] == 2
    assert "pass_at_2" in results["rows"][1]
    assert len((tmp_path / "predictions-sft.jsonl").read_text().splitlines()) == 32
    assert "actor/rollout_drift/k3_kl" in results["steps"]["recipe-lr2e-3"][0]
    # verl's validation on the held-out problems before the first step and at the last (--test-freq 10 > 2 steps)
    [(first, before), (last, after)] = results["held_out"]["recipe-lr2e-3"]
    assert (first, last) == (0, 2) and 0 <= before <= 1 and 0 <= after <= 1
    assert "| recipe-lr2e-3 | 0: " in (tmp_path / "results.md").read_text()
    assert (tmp_path / "curves.png").stat().st_size > 10_000 and "| SFT | 20 |" in (tmp_path / "results.md").read_text()
    # each stage's wall time beside llm-bridge plan's estimate of it
    assert results["planned_s"].keys() == {"sft", "merge-sft", "grpo-recipe-lr2e-3", "merge-grpo-recipe-lr2e-3"}
    assert all(v > 0 for v in results["planned_s"].values()) and results["times_s"]["grpo-recipe-lr2e-3"] > 0
    assert "| grpo-recipe-lr2e-3 | " in (tmp_path / "results.md").read_text()
    # graded while the GPU may still be shared (--together): vLLM takes only --gpu-memory-utilization (default 0.3)
    assert "'gpu_memory_utilization': 0.3" in (tmp_path / "logs" / "generate-grpo-recipe-lr2e-3.log").read_text()
    assert results["rows"][1]["step_s_median"] > 0 and "s a step, median (the GPU shared, --together)" in (
        tmp_path / "results.md").read_text()
    # a rerun finds every stage's output and redoes none; --carry-out packs what another lease needs to go on
    carry = tmp_path / "carry"
    again = subprocess.run([*argv, "--carry-out", str(carry)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "[sft]" not in again.stdout and "[grpo-recipe" not in again.stdout, again.stdout
    assert [piece.name for piece in carry.iterdir()] == ["lb-carry.tar.part00"]  # the tiny model: one piece
    # another lease: only the pieces. --continue goes on from the arm's newest GRPO model (another lease's steps), as a
    # run of its own whose steps count on from the earlier run's, and the SFT stage is not redone: its row came along.
    # --grpo-time-limit hands the run the recipe's time-limit save (an hour away: no stop here). Without --together
    lease = tmp_path / "lease2"
    lease.mkdir()
    subprocess.run(f"cat {carry}/lb-carry.tar.part* | tar x -C {lease}", shell=True, check=True)
    started = time.time()
    argv = [*learn_bench(lease, "recipe@2e-3", "--updates", "4"), "--grpo-steps", "1"]
    more = subprocess.run([*argv, "--continue", "--grpo-time-limit", "3600"], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert more.returncode == 0, more.stdout[-3000:] + more.stderr[-3000:]
    assert "[sft]" not in more.stdout and "[generate-sft]" not in more.stdout, more.stdout[-3000:]
    assert not (lease / "models" / "sft").exists()
    before = json.loads((tmp_path / "results.json").read_text())
    results = json.loads((lease / "results.json").read_text())
    assert results["rows"][0] == before["rows"][0]
    cont = results["rows"][-1]
    assert cont["model"] == "GRPO (recipe-lr2e-3-cont, from grpo-recipe-lr2e-3 at step 2)"
    assert (cont["steps"], cont["steps_this_run"]) == (3, 1), cont
    # the curves go back to the first lease's first step: its metrics came along (its step 2 is the new run's step 0)
    assert [step for step, _ in results["held_out"]["recipe-lr2e-3-cont"]] == [0, 2, 3]
    assert results["held_out"]["recipe-lr2e-3-cont"][:2] == [list(p) for p in before["held_out"]["recipe-lr2e-3"]]
    assert [s["training/global_step"] for s in results["steps"]["recipe-lr2e-3-cont"]] == [1, 2, 3]
    assert json.loads((lease / "models" / "grpo-recipe-lr2e-3-cont" / "learn_bench.json").read_text()) == {
        "grpo_steps": 3, "from": "grpo-recipe-lr2e-3", "runs": [["grpo-recipe-lr2e-3", 0], ["grpo-recipe-lr2e-3-cont", 2]]}
    rl = yaml.safe_load((lease / "team-rendered-grpo-recipe-lr2e-3-cont.yaml").read_text())["rl"]
    assert rl["model"] == str(lease / "models" / "grpo-recipe-lr2e-3")
    # the deadline reaches the trainer loop's Ray actor, an hour from the run's start
    log = (lease / "logs" / "grpo-recipe-lr2e-3-cont.log").read_text()
    deadline = int(re.search(r"'MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP': '(\d+)'", log).group(1))
    assert started + 3600 <= deadline + 1 <= time.time() + 3600 + 1, (started, deadline)
    # what needs the SFT model is refused there, naming what to carry
    refused = subprocess.run([*argv, "--continue", "--drift-length", "24"], cwd=REPO, capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode != 0 and "the SFT model is not here" in refused.stderr, refused.stderr[-2000:]
    assert "--drift-length starts from it. Fix: carry models/sft" in refused.stderr, refused.stderr[-2000:]
    # --drift-length: one step of the SFT model with every response 24 tokens long (the first lease's folder)
    drift_run = subprocess.run([*learn_bench(tmp_path, ""), "--drift-length", "24"], cwd=REPO, capture_output=True,
                               text=True, timeout=900)
    assert drift_run.returncode == 0, drift_run.stdout[-3000:] + drift_run.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    # the drift run: every response sampled on past the end-of-sequence token (ignore_eos) to its 24 tokens; the CPU's
    # rollout and actor both compute in fp32, so vLLM's bf16 drift is not here, only that it is measured and shown
    drift = results["drift"]
    assert drift["response_length_mean"] == 24 and list(drift["k3_kl_by_position"]) == ["0_to_256"], drift
    assert 0 <= drift["k3_kl_by_position"]["0_to_256"] < 1e-3 and 0 <= drift["k3_kl"] < 1e-3, drift
    assert "| 0 to 256 | " in (tmp_path / "results.md").read_text()
    drift_rl = yaml.safe_load((tmp_path / "team-rendered-drift-24.yaml").read_text())["rl"]
    assert drift_rl["model"] == str(tmp_path / "models" / "sft-88-positions") and drift_rl["max_response_length"] == 24


def test_an_arm_is_a_known_algorithm_and_an_optional_learning_rate():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import learn_bench

    assert learn_bench.parse_arms("recipe,verl-example,recipe@1e-4") == [
        ("recipe", None), ("verl-example", None), ("recipe", "1e-4")]
    assert learn_bench.run_name("recipe", "1e-4") == "grpo-recipe-lr1e-4" and learn_bench.run_name("recipe", None) == "grpo-recipe"
    # continuing from an earlier GRPO model: -cont, then -cont2, -cont3 (never the name of the model it starts from)
    assert [learn_bench.run_name("recipe", "3e-5", start) for start in (
        "grpo-recipe-lr3e-5", "grpo-recipe-lr3e-5-cont", "grpo-recipe-lr3e-5-cont2", "grpo-recipe-contrast")] == [
        "grpo-recipe-lr3e-5-cont", "grpo-recipe-lr3e-5-cont2", "grpo-recipe-lr3e-5-cont3", "grpo-recipe-lr3e-5-cont"]
    assert learn_bench.parse_arms("") == []
    for bad, says in (("recpie", "no arm 'recpie'"), ("recipe@fast", "must be a number"), ("recipe@0", "above 0"), ("recipe,recipe", "twice")):
        try:
            learn_bench.parse_arms(bad)
        except SystemExit as error:
            assert says in str(error) and "--arms" in str(error), error
        else:
            raise AssertionError(f"--arms {bad!r} was accepted")
    # --updates must split a step's prompts evenly: refused before anything is made
    refused = subprocess.run([sys.executable, "benchmarks/learn_bench.py", "--work", "/nonexistent/lb", "--prompts", "12",
                              "--updates", "8"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "--updates 8: must divide --prompts 12" in refused.stderr, refused.stderr
    assert "e.g. --updates 4" in refused.stderr and not Path("/nonexistent").exists()
    # --grpo-from names a merged model of this work folder
    refused = subprocess.run([sys.executable, "benchmarks/learn_bench.py", "--work", "/nonexistent/lb", "--grpo-from",
                              "grpo-recipe"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "--grpo-from grpo-recipe: no merged model in /nonexistent/lb/models/grpo-recipe" \
        in refused.stderr and not Path("/nonexistent").exists(), refused.stderr
    # --continue finds each arm's own model; --grpo-from names one for all: not both
    refused = subprocess.run([sys.executable, "benchmarks/learn_bench.py", "--work", "/nonexistent/lb", "--continue",
                              "--grpo-from", "grpo-recipe"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "--continue and --grpo-from" in refused.stderr and "Fix: give one" in refused.stderr
    assert not Path("/nonexistent").exists()
    # a time limit shorter than a start-up, a step and a save would pass unnoticed (verl's rule saves only ahead of it)
    refused = subprocess.run([sys.executable, "benchmarks/learn_bench.py", "--work", "/nonexistent/lb",
                              "--grpo-time-limit", "60"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "--grpo-time-limit 60: too short" in refused.stderr and "e.g. 1200" in refused.stderr
    assert not Path("/nonexistent").exists()


def test_continue_finds_each_arm_s_newest_model_and_carry_out_splits_what_goes_on_into_pieces(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import learn_bench

    models = tmp_path / "work" / "models"
    for name in ("sft", "grpo-recipe-lr3e-5", "grpo-recipe-lr3e-5-cont", "grpo-verl-example", "grpo-recipe-lr3e-5-cont3"):
        (models / name).mkdir(parents=True)
        (models / name / "config.json").write_text("{}")
    (models / "grpo-recipe-lr3e-5-cont2").mkdir()  # a run that never got merged: not a model to go on from
    assert learn_bench.newest(models, "recipe", "3e-5") == "grpo-recipe-lr3e-5-cont"
    assert learn_bench.newest(models, "verl-example", None) == "grpo-verl-example"
    assert learn_bench.newest(models, "recipe", None) == "sft"  # another learning rate's models are not this arm's
    # the pieces join into a tar of the models named, every run's metrics, the SFT row and the results; nothing else
    work = tmp_path / "work"
    weights = os.urandom(3 * 2**20 + 5)
    (models / "grpo-recipe-lr3e-5-cont" / "model.safetensors").write_bytes(weights)
    (work / "logs").mkdir()
    (work / "logs" / "grpo-recipe-lr3e-5-local-7.metrics.jsonl").write_text("{}\n")
    (work / "logs" / "grpo-recipe-lr3e-5.log").write_text("a long log\n")
    (work / "sft-row.json").write_text('{"model": "SFT"}\n')
    out = tmp_path / "out"
    out.mkdir()
    (out / "lb-carry.tar.part09").write_text("an earlier pack's piece")
    monkeypatch.setattr(learn_bench, "CARRY_PIECE_MIB", 1)
    pieces = learn_bench.carry_out(work, out, ["grpo-recipe-lr3e-5-cont"])
    assert [p.name for p in pieces] == [f"lb-carry.tar.part0{n}" for n in range(4)] == sorted(p.name for p in out.iterdir())
    assert all(p.stat().st_size <= 2**20 for p in pieces)
    there = tmp_path / "there"
    there.mkdir()
    subprocess.run(f"cat {out}/lb-carry.tar.part* | tar x -C {there}", shell=True, check=True)
    assert sorted(str(p.relative_to(there)) for p in there.rglob("*") if p.is_file()) == [
        "logs/grpo-recipe-lr3e-5-local-7.metrics.jsonl", "models/grpo-recipe-lr3e-5-cont/config.json",
        "models/grpo-recipe-lr3e-5-cont/model.safetensors", "sft-row.json"]
    assert (there / "models" / "grpo-recipe-lr3e-5-cont" / "model.safetensors").read_bytes() == weights


def test_stages_run_together_start_at_once_are_graded_as_each_ends_and_failures_are_named(tmp_path):
    sys.path.insert(0, str(REPO / "tests" / "cpu"))
    import pipeline

    stage = pipeline.Stage(tmp_path)
    marks = tmp_path / "marks"
    marks.mkdir()
    # each waits (5 s at most) until both have started: run one after another, the first would give up and fail
    both = f'touch {marks}/$0; for i in $(seq 50); do [ $(ls {marks} | wc -l) = 2 ] && exit 0; sleep 0.1; done; exit 7'
    stage.run_together([(name, ["timeout", "20", "bash", "-c", both, name], None) for name in ("a", "b")])
    assert stage.times.keys() == {"a", "b"} and max(stage.times.values()) < 10, stage.times
    try:
        stage.run_together([("fails", ["bash", "-c", "echo RuntimeError: the cause; echo cleaning up; exit 3"], None),
                            ("works", ["true"], None)])
    except pipeline.StageFailed as error:  # the cause is in the message itself: a CI summary shows no log
        assert "[fails] failed with exit code 3" in str(error) and "works" not in str(error), error
        assert "    RuntimeError: the cause\n" in str(error) and "cleaning up" not in str(error), error
    else:
        raise AssertionError("a failed run went unreported")
    assert stage.times["works"] < 5 and (tmp_path / "logs" / "works.log").is_file()
    # on_done grades a run as soon as it ends, while the others go on; each run's time stays its own; a failed run
    # is not graded
    seen = []

    def grade(name):
        seen.append((name, (tmp_path / "slow-ended").exists()))
        time.sleep(3 if name == "fast" else 0)

    slow = ["bash", "-c", f"sleep 1.5; touch {tmp_path}/slow-ended"]
    try:
        stage.run_together([("fast", ["true"], None), ("slow", slow, None), ("broken", ["false"], None)], on_done=grade)
    except pipeline.StageFailed as error:
        assert "[broken] failed" in str(error) and "slow" not in str(error), error
    else:
        raise AssertionError("a failed run went unreported")
    assert seen == [("fast", False), ("slow", True)], seen
    assert stage.times["slow"] < 2.5, stage.times  # it ended during fast's 3 s of grading
    # a run whose Ray node missed Ray's start-up deadline goes once more (a busy machine); a second miss is a failure
    ray_late = f'echo "Exception: {pipeline.RAY_START_TIMEOUT}. This could happen ..."; exit 1'
    late_once = f'if [ -e {tmp_path}/tried ]; then echo started; else touch {tmp_path}/tried; {ray_late}; fi'
    stage.run_together([("late-once", ["bash", "-c", late_once], None)])
    assert (tmp_path / "logs" / "late-once.log").read_text() == "started\n"
    try:
        stage.run_together([("always-late", ["bash", "-c", f"echo attempt >> {tmp_path}/attempts; {ray_late}"], None)])
    except pipeline.StageFailed as error:
        assert "[always-late] failed" in str(error) and pipeline.RAY_START_TIMEOUT in str(error), error
    else:
        raise AssertionError("a run that never started Ray went unreported")
    assert (tmp_path / "attempts").read_text() == "attempt\nattempt\n"


def test_sampled_answers_are_graded_as_a_mean_and_as_pass_at_k(tmp_path):
    """Three prompts, two answers each: both right, one right, none right -> mean 1/2, pass@2 2/3."""
    import pandas as pd

    sys.path.insert(0, str(REPO / "benchmarks"))
    import learn_bench

    truth = ["7", "8", "9"]
    rows = [{"data_source": "openai/gsm8k", "reward_model": {"ground_truth": t}, "extra_info": {"index": 2 * n + k, "prompt_row": n}}
            for n, t in enumerate(truth) for k in range(2)]
    pd.DataFrame(rows).to_parquet(tmp_path / "test-x2.parquet")
    answers = ["#### 7", "#### 7", "#### 8", "#### 1", "#### 2", ""]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps({"id": str(i), "response": a}) + "\n" for i, a in enumerate(answers)))
    mean, pass_at = learn_bench.grade_samples(tmp_path / "test-x2.parquet", tmp_path / "samples.jsonl")
    assert (mean, pass_at) == (0.5, 2 / 3)


def test_the_drift_is_read_from_the_drift_run_s_step_in_order_of_response_positions(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import learn_bench

    assert learn_bench.drift_summary(tmp_path, "drift-32768") is None  # the run logged no step: no figure
    prefix = "actor/rollout_drift/k3_kl_tokens_"
    spans = {"256_to_1024": 2e-4, "from_16384": 9e-4, "0_to_256": 1e-4, "4096_to_16384": 5e-4, "1024_to_4096": 3e-4}
    step = {"critic/score/mean": 0.0, "response_length/mean": 32768.0, "actor/rollout_drift/k3_kl": 6e-4,
            "actor/rollout_drift/rollout_ppl": 1.7, **{prefix + span: value for span, value in spans.items()}}
    (tmp_path / "drift-32768-local-1.metrics.jsonl").write_text(json.dumps({"step": 1, "data": step}) + "\n")
    drift = learn_bench.drift_summary(tmp_path, "drift-32768")
    assert list(drift["k3_kl_by_position"].items()) == [("0_to_256", 1e-4), ("256_to_1024", 2e-4), ("1024_to_4096", 3e-4),
                                                        ("4096_to_16384", 5e-4), ("from_16384", 9e-4)]
    assert (drift["k3_kl"], drift["response_length_mean"], drift["rollout_ppl"]) == (6e-4, 32768.0, 1.7)
