"""Issue 38, points 3 and 4: the recipe's GRPO makes a model better at its task, and its departures from verl's
defaults change no mathematics, on a CPU in CI.

A tiny Qwen2 learns the arithmetic task's easiest level (train/scripts/data_preprocess/arithmetic.py with 0 steps:
"Mei has 17 shells. How many shells does Mei have now?" -> "#### 17") by SFT through the rendered run_sft.sbatch,
is merged, and then trains with GRPO through the rendered run_ppo.sbatch, graded by verl's own gsm8k reward
(data_source openai/gsm8k). The GRPO run is the recipe's: old_log_probs rollout (bypass mode), no KL loss,
its patches on. Three settings make 15 steps on a 2-core machine enough to see learning, all stated:

- The same 16 prompts every step (8 responses each): the curve measures the policy, not which prompts a step drew.
- Sampling at temperature 1.5: the SFT model's greedy answers are right more often than its sampled ones, so
  sharpening (GRPO's first gain on any model) has room to show. The actor computes its log-probs at the same
  temperature (verl's rollout.temperature), as the test rollout does (verl asks vLLM for processed log-probs).
- Two passes over each step's batch (ppo_epochs 2) at learning rate 1e-3; larger learning rates made this tiny model
  collapse (reward 0 within 3 steps).

The rise is the mean reward of the second half of the run (steps 8-15) minus that of the first 3 steps. Sampling is
seeded, so a run at learning rate 0 gives the same rewards every time; a learning run does only for its first few
steps, after which the order of float reductions between the 2 ranks sends it its own way: two runs of the test's
seed rose by 0.164 and 0.217 (one peaked at 0.57 in step 9 and ended at 0.36; its last 3 steps alone rose by only
0.07). The same run with learning rate 0 (only sampling noise) rose by RISES_AT_LR_0 below (rollout seeds 1-6,
largest 0.033); the margin, 0.10, is three times that and under both rises measured with learning. The test runs
the learning-rate-0 run too, so a change that lifts the reward without learning fails here as well.
"""

import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent / "cpu"))
import build_tiny  # noqa: E402
import pipeline  # noqa: E402
sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from learn_bench import ARMS  # noqa: E402  the GPU benchmark's arms: the same settings are checked here

GRPO_STEPS, FIRST, PROMPTS = 15, 3, 16
RISES_AT_LR_0 = [0.019, 0.017, -0.026, -0.004, 0.012, 0.033]  # rollout seeds 1-6, one replica (2 cores, 2026-12-04)
MARGIN = 0.10
# one rollout replica over the 2 ranks: it seeds each request by its prompt and draw, so a seed gives the same samples
ONE_REPLICA = ("actor_rollout_ref.rollout.tensor_model_parallel_size=2",)


def rise(scores: list[float]) -> float:
    second_half = scores[len(scores) // 2:]
    return sum(second_half) / len(second_half) - sum(scores[:FIRST]) / FIRST


@pytest.fixture(scope="module")
def taught(tmp_path_factory) -> Path:
    """The SFT model of the copy task, merged, and the team.yaml its GRPO runs render from."""
    work = tmp_path_factory.mktemp("learns")
    stage = pipeline.Stage(work)
    python = sys.executable
    stage.run("data", [python, "train/scripts/data_preprocess/arithmetic.py", "--out", str(work / "data"),
                       "--train", "3000", "--test", "200", "--train-steps", "0", "--test-steps", "0"])
    # the tokenizer learns the words the model will see: the SFT conversations and what the chat template adds
    sft = pd.read_parquet(work / "data" / "sft" / "train.parquet")
    corpus = [message["content"] for messages in sft["messages"] for message in messages] + build_tiny.CHAT_WORDS
    build_tiny.build_model(build_tiny.build_tokenizer(corpus, vocab_size=512), work / "tiny" / "model")
    pd.read_parquet(work / "data" / "rl" / "train.parquet").head(PROMPTS).to_parquet(work / "data" / "rl" / "fixed.parquet")

    team = pipeline.team_config(work)
    team["sft"].update(experiment_name="sft-copy", train_files=str(work / "data" / "sft" / "train.parquet"),
                       val_files=str(work / "data" / "sft" / "test.parquet"), max_length=128, train_batch_size=32,
                       lr=3e-3, total_epochs=10, total_training_steps=200, save_freq=200)
    team["rl"].update(model=str(work / "models" / "sft"), train_files=str(work / "data" / "rl" / "fixed.parquet"),
                      val_files=str(work / "data" / "rl" / "test.parquet"), reward_function=None,
                      train_batch_size=PROMPTS, ppo_mini_batch_size=PROMPTS, rollout_n=8, max_response_length=16,
                      lr=1e-3, total_epochs=GRPO_STEPS, total_training_steps=GRPO_STEPS, save_freq=GRPO_STEPS)
    stage.run("sft", pipeline.sft_command(pipeline.render(work, team)), pipeline.CPU_ENV)
    stage.run("merge", pipeline.merge_command(work / "checkpoints" / "sft" / "sft-copy", work / "models" / "sft"))
    return work


def grpo_job(work: Path, name: str, *overrides: str, rl: dict | None = None, env: dict | None = None) -> tuple:
    """One GRPO run of the script rendered with rl.experiment_name `name` (and `rl` edits), as Stage runs it."""
    team = yaml.safe_load((work / "team-rendered.yaml").read_text())
    team["rl"].update(experiment_name=name, **(rl or {}))
    rendered = pipeline.render(work, team, f"rendered-{name}")
    return name, pipeline.grpo_command(rendered, "actor_rollout_ref.rollout.temperature=1.5", *overrides), \
        {**pipeline.CPU_ENV, **(env or {})}


def grpo_runs(work: Path, *jobs: tuple) -> dict[str, list[dict]]:
    """Each run's metrics, step by step. The runs go one after another: on an idle machine two at once finish sooner
    (121 s against 148 s, measured), but in the suite the other test process keeps both cores busy, and every Ray
    process of a waiting run spends ~1% of a core on its own (Ray wakes each worker every 10 ms): two runs alive at
    once double that waste (measured: a two-step run 171 CPU s alone; in the suite 274 beside another, 175 alone)."""
    stage = pipeline.Stage(work)
    for job in jobs:
        stage.run(*job)
    return {name: [m["data"] for m in pipeline.metrics(work / "logs", name) if "critic/score/mean" in m["data"]]
            for name, _, _ in jobs}


@pytest.fixture(scope="module")
def learning_and_frozen(taught) -> dict[str, list[dict]]:
    """The learning run, and the same run at learning rate 0: only sampling noise moves its reward. The lr-0 run also
    carries verl's rollout importance weights (recompute mode, RECOMPUTE_IS below): with no update they change no
    sample and so no reward (measured: the same 15 rewards as the plain bypass-mode run), and the run shows them
    acting over 15 steps."""
    same = (*ONE_REPLICA, "actor_rollout_ref.rollout.seed=6")
    return grpo_runs(taught, grpo_job(taught, "grpo-learns", *same, "actor_rollout_ref.actor.ppo_epochs=2"),
                     grpo_job(taught, "grpo-lr0", *same, "actor_rollout_ref.actor.optim.lr=0.0", rl=RECOMPUTE_IS))


@pytest.fixture(scope="module")
def learning(learning_and_frozen) -> list[dict]:
    return learning_and_frozen["grpo-learns"]


@pytest.fixture(scope="module")
def frozen(learning_and_frozen) -> list[dict]:
    return learning_and_frozen["grpo-lr0"]


def test_grpo_raises_the_reward_beyond_what_sampling_noise_reaches(learning, frozen):
    rewards = [m["critic/score/mean"] for m in learning]
    frozen = [m["critic/score/mean"] for m in frozen]
    assert MARGIN >= 3 * max(RISES_AT_LR_0)
    print(f"rewards, lr 1e-3: {rewards}\nrewards, lr 0:    {frozen}")
    assert len(rewards) == len(frozen) == GRPO_STEPS
    assert rise(frozen) < MARGIN, f"with learning rate 0 the reward rose by {rise(frozen):.3f}: {frozen}"
    assert rise(rewards) >= MARGIN, \
        f"GRPO raised the reward by only {rise(rewards):.3f} in {GRPO_STEPS} steps: {rewards}"


# Point 4: each departure from verl's defaults leaves the mathematics alone. Two steps, two passes over the batch a
# step (the second is off-policy by one update, so the old log-probs matter; two mini-batches would not do: verl's
# split of a step's samples into mini-batches differs from run to run). Every run draws the same samples: one rollout
# replica (tensor parallel 2 over the 2 ranks), which seeds each request by its prompt and draw. The actor computes
# in fp32, as the test rollout does: in FSDP's default bf16 the actor's log-probs differ from the rollout's and from
# each other by bf16 rounding (PPO KL ~3e-4 a step here), which would hide what is compared.
# verl's example here is its algorithm: KL loss, recomputed old log-probs, verl as released (the speed knobs change
# no mathematics and are compared in docs/benchmarks.md). Its KL loss (coefficient 0.001) changes the objective, not
# how it is computed, and Adam turns its small gradient into full-size steps wherever the policy gradient is small:
# with and without it the runs part after one update (measured: grad norm +1.5% in step 1, +42% in step 2; policy
# loss 23% apart in step 2). So every departure is compared with the recipe given verl's KL loss (each run in the
# suite costs ~4 CPU minutes: one reference, not one with and one without); whether leaving the KL loss out learns as
# well is the GPU's question (docs/benchmarks.md, the learning table).
# Tolerances (policy loss, absolute; gradient norm, relative): fp32 rounding, measured 4e-8 and 3e-6 without the KL
# loss; with it, Adam magnifies the rounding of its small gradient (measured 4.6e-6 and 9e-5 for verl's example), so
# 5e-5 and 1e-3: still 15 times under what the KL loss itself changes in step 1.
VERL_EXAMPLE_RL, VERL_EXAMPLE_ENV = ARMS["verl-example"]
RECIPE_WITH_KL = {key: VERL_EXAMPLE_RL[key] for key in ("use_kl_loss", "kl_loss_coef")}
DEPARTURES = {
    "grpo-patches-off": dict(rl=RECIPE_WITH_KL, env={"BRIDGE_VERL_PATCHES": "0"}),
    "grpo-recompute": dict(rl={**RECIPE_WITH_KL, "old_log_probs": "recompute"}),
    "grpo-verl-example": dict(rl=VERL_EXAMPLE_RL, env=VERL_EXAMPLE_ENV),
}
REFERENCE = "grpo-recipe-kl"  # the recipe given verl's KL loss, which every departure is compared with
LOSS_TOLERANCE, GRAD_NORM_TOLERANCE = 5e-5, 1e-3
AGREEMENT_STEPS = [*ONE_REPLICA, "actor_rollout_ref.rollout.seed=7",
                   "++actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}",
                   "actor_rollout_ref.actor.ppo_epochs=2", "trainer.total_training_steps=2"]


@pytest.fixture(scope="module")
def two_step_runs(taught) -> dict[str, list[dict]]:
    """Every two-step run below: the recipe with verl's KL loss, each departure, and bypass mode with rejection
    sampling."""
    jobs = [grpo_job(taught, REFERENCE, *AGREEMENT_STEPS, rl=RECIPE_WITH_KL)]
    jobs += [grpo_job(taught, name, *AGREEMENT_STEPS, **settings) for name, settings in DEPARTURES.items()]
    jobs.append(grpo_job(taught, "grpo-bypass-rejection", *ONE_REPLICA, "actor_rollout_ref.rollout.seed=7",
                         "trainer.total_training_steps=2", rl=BYPASS_REJECTION))
    return grpo_runs(taught, *jobs)


@pytest.mark.parametrize("name", DEPARTURES)
def test_a_departure_from_verls_defaults_gives_the_same_first_steps(two_step_runs, name):
    settings, recipe, steps = DEPARTURES[name], two_step_runs[REFERENCE], two_step_runs[name]
    assert len(steps) == len(recipe) == 2
    for step, (ours, theirs) in enumerate(zip(recipe, steps), start=1):
        keys = ("critic/score/mean", "actor/pg_loss", "actor/grad_norm", "actor/ppo_kl")
        print(name, "vs", REFERENCE, step, {k: (ours[k], theirs[k]) for k in keys})
        assert theirs["critic/score/mean"] == ours["critic/score/mean"], f"step {step}: the samples differ"
        assert abs(theirs["actor/pg_loss"] - ours["actor/pg_loss"]) < LOSS_TOLERANCE, f"step {step}"
        assert theirs["actor/grad_norm"] == pytest.approx(ours["actor/grad_norm"], rel=GRAD_NORM_TOLERANCE), f"step {step}"
        if settings.get("env", {}).get("BRIDGE_VERL_PATCHES") != "0":  # every mode logs the drift (verl_patches 8)
            assert abs(theirs["actor/rollout_drift/kl"]) < 1e-3, f"step {step}"


def test_the_drift_metric_sees_the_actors_bf16_rounding(learning, two_step_runs):
    """The rollout here samples in fp32. The agreement runs' actor computes in fp32 too, the learning run's in
    FSDP's default bf16: its log-probs differ from the rollout's by bf16 rounding, and actor/rollout_drift/ shows it
    (measured K3 KL: fp32 3e-9 at most, float rounding; bf16 2e-5 to 1.2e-4 over the 15 steps)."""
    bf16 = [m["actor/rollout_drift/k3_kl"] for m in learning]
    fp32 = [m["actor/rollout_drift/k3_kl"] for m in two_step_runs[REFERENCE]]
    print(f"drift (K3 KL), bf16 actor: {bf16}\nfp32 actor: {fp32}")
    assert max(map(abs, fp32)) < 1e-7 and min(bf16) > 1e-5, (fp32, bf16)


# rl.rollout_correction reaches verl's code in both modes. The actor computes in its default bf16 against the fp32 test
# rollout, so there is a drift to correct (K3 KL 2e-5 to 1e-4 above). Whether a correction learns better is the GPU's
# question (issue 38 point 5); here each must act: rejection drops some tokens, importance weights move off 1.
# (verl's preset bound for seq_mean_k1, ratios within 0.1%, drops most sequences of a bf16 actor against an fp32
# rollout; vLLM in bf16 against a bf16 actor is measured on the GPU.)
BYPASS_REJECTION, RECOMPUTE_IS = ARMS["bypass-rs"][0], ARMS["recompute-is"][0]


def test_rejection_sampling_acts_in_bypass_mode(two_step_runs):
    steps = two_step_runs["grpo-bypass-rejection"]
    assert len(steps) == 2
    for step in steps:  # verl's bypass-mode loss, in the actor (measured: 77% and 81% of tokens)
        assert 0 < step["actor/rollout_corr/rollout_rs_masked_fraction"] < 1, step


def test_importance_weights_act_in_recompute_mode(frozen):
    assert len(frozen) == GRPO_STEPS
    for step in frozen:  # the trainer's weights (measured: standard deviation 0.0075-0.0094, largest 1.09; threshold 2)
        assert step["rollout_corr/rollout_is_std"] > 1e-3 and step["rollout_corr/rollout_is_max"] <= 2.0, step
