"""llm-bridge submit's checks and --dry-run, before anything reaches SLURM: the order and dependencies of the
sbatch lines, GRPO fed SFT's merged model, and every refusal naming its fix with nothing written or queued.
The chain itself runs on the SLURM lab in test_slurm_chain.py."""

import shlex

import pytest
import yaml

from conftest import bridge


@pytest.fixture
def team(example, write_team, tmp_path):
    example["slurm"].update(nodes=1)
    example["slurm"].pop("nodelist")
    example["wandb"].update(mode="offline")  # no W&B login on a test machine
    example["paths"].update(logs=str(tmp_path / "logs"), checkpoints=str(tmp_path / "ckpt"), models=str(tmp_path / "models"))
    return write_team(example)


def sbatch_lines(stdout: str) -> list[list[str]]:
    return [shlex.split(line) for line in stdout.splitlines() if line.startswith("sbatch ")]


def test_dry_run_prints_the_chain_in_order_and_writes_nothing(team, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "x")
    result = bridge("submit", "--team", str(team), "--stages", "sft,grpo,eval,upload", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = sbatch_lines(result.stdout)
    scripts = [next(a for a in line if a.endswith(".sbatch")).split("/scripts/")[1] for line in lines]
    assert scripts == ["sft/run_sft.sbatch", "generation/merge_model.sbatch", "ppo/run_ppo.sbatch",
                       "generation/merge_model.sbatch", "generation/eval_model.sbatch", "generation/upload_model.sbatch"]
    assert all("--kill-on-invalid-dep=yes" in line for line in lines)
    assert not any(a.startswith("--dependency") for a in lines[0])
    for previous, line in zip(["sft", "merge-sft", "grpo", "merge-grpo", "eval"], lines[1:]):
        assert f"--dependency=afterok:<{previous} job id>" in line
    sft_model = str(tmp_path / "models" / "sft-qwen2.5-0.5b-gsm8k")
    assert lines[1][-2:] == [str(tmp_path / "ckpt" / "sft" / "sft-qwen2.5-0.5b-gsm8k"), sft_model]
    assert lines[4][-2:] == [str(tmp_path / "models" / "grpo-qwen2.5-0.5b-gsm8k"), "grpo-qwen2.5-0.5b-gsm8k"]
    assert "--dry-run" not in lines[5] and "--eval" in lines[5]
    assert not (tmp_path / "logs" / "chains").exists()


def test_grpo_alone_trains_rl_model_and_only_its_merge_follows(team):
    result = bridge("submit", "--team", str(team), "--stages", "grpo", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert [line[-3].split("/scripts/")[1] if len(line) > 4 else line[-1].split("/scripts/")[1]
            for line in sbatch_lines(result.stdout)] == ["ppo/run_ppo.sbatch", "generation/merge_model.sbatch"]


def test_from_a_stage_needs_what_the_skipped_stages_make(team, tmp_path):
    result = bridge("submit", "--team", str(team), "--stages", "sft,grpo", "--from", "grpo", "--dry-run")
    assert result.returncode == 1
    assert f"grpo needs {tmp_path / 'models' / 'sft-qwen2.5-0.5b-gsm8k'}, which merge-sft makes" in result.stderr
    assert "Fix: --from merge-sft" in result.stderr and "Nothing queued" in result.stderr

    merged = tmp_path / "models" / "sft-qwen2.5-0.5b-gsm8k"
    merged.mkdir(parents=True)
    (merged / "config.json").write_text("{}")
    result = bridge("submit", "--team", str(team), "--stages", "sft,grpo", "--from", "grpo", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert [line[-1].rsplit("/", 1)[-1] for line in sbatch_lines(result.stdout)][:1] == ["run_ppo.sbatch"]


def test_a_chain_never_writes_over_a_merged_model(team, tmp_path):
    merged = tmp_path / "models" / "sft-qwen2.5-0.5b-gsm8k"
    merged.mkdir(parents=True)
    (merged / "config.json").write_text("{}")
    result = bridge("submit", "--team", str(team), "--stages", "sft,grpo", "--dry-run")
    assert result.returncode == 1
    assert f"merge-sft would write {merged}, which exists" in result.stderr
    assert "Fix: --from grpo to use it, or move it away" in result.stderr


@pytest.mark.parametrize("stages, edit, message", [
    ("sft,eval", {}, "OPENAI_API_KEY is not set, and the eval stage's judge needs it"),
    ("sft,upload", {"huggingface": {"org": "p07-team", "offline": True}}, "huggingface.offline is true"),
    ("eval", {}, "eval and upload need a model the chain trains"),
    ("sft,dpo", {}, "--stages: no stage dpo"),
])
def test_a_chain_that_cannot_run_is_refused_before_anything_is_queued(example, write_team, tmp_path, monkeypatch,
                                                                      stages, edit, message):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    example["paths"].update(logs=str(tmp_path / "logs"))
    example["wandb"].update(mode="offline")
    example.update(edit)
    result = bridge("submit", "--team", str(write_team(example)), "--stages", stages)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert not (tmp_path / "logs" / "chains").exists()


def test_the_chain_config_is_the_team_config_with_grpo_on_sft_s_model(team, tmp_path):
    from llm_bridge.login.chain import chain_config
    from llm_bridge.login.validate import validate

    config, _ = validate(team, local_paths=False)
    chained = chain_config(config, ["sft", "grpo"])
    assert chained.rl.model == f"{tmp_path}/models/{config.sft.experiment_name}"
    assert chained.model_dump(exclude={"rl"}) == config.model_dump(exclude={"rl"})
    assert chained.rl.model_dump(exclude={"model"}) == config.rl.model_dump(exclude={"model"})
    assert chain_config(config, ["grpo"]) == config
    assert yaml.safe_load(team.read_text())["rl"]["model"] == config.rl.model  # the team's file is left alone


def test_a_requeued_run_s_time_left_comes_from_its_earlier_run(team, tmp_path):
    """A job that requeued itself writes one metrics file a run. Just after the resume, the new file holds one step
    (start-up, not timed), so the time left comes from the first run's steps; the step shown is the newest run's."""
    import json

    from llm_bridge.login.chain import _progress
    from llm_bridge.login.validate import validate

    config, _ = validate(team, local_paths=False)
    logs = tmp_path / "logs"
    logs.mkdir()
    name = config.sft.experiment_name

    def run(stamp, steps):
        lines = [json.dumps({"step": s, "data": {"train/loss": 1.0, "timing_s/step": t}}) for s, t in steps]
        (logs / f"{name}-42-{stamp}.metrics.jsonl").write_text("\n".join(lines) + "\n")

    run("20261206-080000", [(1, 30.0), (2, 2.0), (3, 2.0), (4, 2.0)])
    run("20261206-080500", [(5, 40.0)])
    stage = {"name": "sft", "job": "42", "args": ["trainer.total_training_steps=65"]}
    assert _progress(stage, config, running=True) == "step 5 of 65, ~2 min left: train/loss 1"
    (logs / f"{name}-42-20261206-080000.metrics.jsonl").unlink()  # no step timed but a start-up: no guess
    assert _progress(stage, config, running=True) == "step 5 of 65: train/loss 1"
