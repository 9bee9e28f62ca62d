"""The worked configs for the teams' real jobs (README_multi_node_SFT_PPO.md 2-6: Qwen3-32B and Qwen3-235B-A22B LoRA
SFT on 3 x 8 GPUs, GRPO with LoRA on Qwen3-8B) pass `check` on top of the example, render into verl's keys, and the
plan the README shows is the one `check` prints."""

import re

import pytest
import yaml

from llm_bridge.login.loader import load
from llm_bridge.login.memory_plan import plan
from llm_bridge.login.render import render_all
from llm_bridge.login.rules import check

from conftest import REPO

README = REPO / "README_multi_node_SFT_PPO.md"


def worked_configs() -> list[str]:
    section = README.read_text().split("## 2-6.")[1]
    return re.findall(r"```yaml\n(.*?)```", section, flags=re.S)


def merged(example: dict, snippet: str) -> dict:
    for section, values in yaml.safe_load(snippet).items():
        example[section].update(values)
    return example


def test_the_readme_has_the_three_worked_configs():
    titles = [text.splitlines()[0] for text in worked_configs()]
    assert [t.split(":")[1].strip() for t in titles] == [
        "Qwen3-32B の LoRA SFT（3 ノード x 8 GPU、32k トークンの推論データ）",
        "Qwen3-235B-A22B の LoRA SFT（3 ノード x 8 GPU、32k トークン）",
        "Qwen3-8B の GRPO を LoRA で（1 ノード x 8 GPU）"]


@pytest.mark.parametrize("index", range(3))
def test_a_worked_config_passes_check_and_renders_its_settings(example, write_team, index):
    config, problems = load(write_team(merged(example, worked_configs()[index])))
    assert config is not None, problems
    errors = [p for p in check(config, local_paths=False) if p.severity == "error"]
    assert errors == []
    scripts = {str(path): text for path, text in render_all(config, write_team(example), "train/scripts").items()}
    if index < 2:
        sft = scripts["mutinode_sft/run_sft_multinode.sbatch"]
        assert "model.lora_rank=32" in sft and "model.enable_gradient_checkpointing=True" in sft
        assert "+checkpoint.save_lora_only=True" in sft
    if index == 1:
        assert "engine.ulysses_sequence_parallel_size=2" in sft and "model.use_liger=False" in sft
        assert "model.target_modules=[q_proj,k_proj,v_proj,o_proj]" in sft
    if index == 2:
        ppo = scripts["ppo/run_ppo.sbatch"]
        assert "actor_rollout_ref.model.lora_rank=32" in ppo and "actor_rollout_ref.rollout.load_format=safetensors" in ppo


def test_the_plan_in_the_readme_is_what_check_prints(example, write_team):
    config, _ = load(write_team(merged(example, worked_configs()[0])))
    shown = README.read_text().split("## 2-6.")[1].split("```text\n")[1].split("```")[0]
    table = plan(config).table(config.slurm.gpu_memory_gib).splitlines()
    assert shown.splitlines() == [line for line in table if line.startswith(("Memory plan", "  stage", "  sft "))]
