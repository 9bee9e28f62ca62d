"""recompute_layers: gradient checkpointing on the first N decoder layers only (llm_bridge/job/partial_recompute.py).
The layers past N run their forward pass once, the first N twice, and the gradients are those of full checkpointing;
the value reaches verl's SFT and GRPO actor through the rendered scripts; check refuses what cannot work and plans
the memory."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers.modeling_utils
from transformers import Qwen2Config, Qwen2ForCausalLM

from llm_bridge.job import partial_recompute
from llm_bridge.login import memory_plan, time_plan
from llm_bridge.login.config import SFT
from llm_bridge.login.loader import load
from llm_bridge.login.model_shape import find_shape
from llm_bridge.login.render import render_all
from test_big_model_rules import model_dir, problems_of
from test_verl_config import compose_verl, verl_argv

LAYERS = 4


def tiny_model() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager")
    return Qwen2ForCausalLM(config).train()


def forwards_and_grads(model) -> tuple[list[int], dict[str, torch.Tensor]]:
    """How many times each decoder layer ran its forward pass in one training step, and the step's gradients."""
    calls = [0] * LAYERS
    for i, layer in enumerate(model.model.layers):
        layer.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    # an input that needs no grad, as verl's LoRA models have (enable_input_require_grads covers the embedding)
    model.model.embed_tokens.weight.requires_grad_(True)
    model(input_ids=ids, labels=ids).loss.backward()
    return calls, {name: p.grad.clone() for name, p in model.named_parameters()}


def test_only_the_first_n_layers_recompute_and_the_gradients_are_unchanged(monkeypatch):
    full = tiny_model()
    full.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    full_calls, full_grads = forwards_and_grads(full)
    assert full_calls == [2] * LAYERS  # every layer recomputes in the backward

    monkeypatch.setenv(partial_recompute.ENV, "1")
    original = transformers.modeling_utils.PreTrainedModel.gradient_checkpointing_enable
    monkeypatch.setattr(transformers.modeling_utils.PreTrainedModel, "gradient_checkpointing_enable", original)
    partial_recompute.install(transformers.modeling_utils)
    partial_recompute.install(transformers.modeling_utils)  # idempotent: wrapped once
    model = tiny_model()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # as verl calls it
    assert [layer.gradient_checkpointing for layer in model.model.layers] == [True] + [False] * (LAYERS - 1)
    calls, grads = forwards_and_grads(model)
    assert calls == [2] + [1] * (LAYERS - 1)
    for name, grad in full_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_a_bad_value_names_the_team_yaml_field(monkeypatch):
    monkeypatch.setenv(partial_recompute.ENV, "all")
    with pytest.raises(ValueError, match="sft.recompute_layers / rl.recompute_layers"):
        partial_recompute.install(transformers.modeling_utils)


def test_the_value_reaches_sft_and_the_grpo_actor_and_only_when_set(example, write_team):
    example["sft"].update(gradient_checkpointing=True, recompute_layers=20)
    example["rl"].update(gradient_checkpointing=True, recompute_layers=12)
    team = write_team(example)
    config, problems = load(team)
    assert config is not None, problems
    scripts = render_all(config, team, "out")  # bash -n checks every script
    assert "\nexport BRIDGE_RECOMPUTE_LAYERS=20\n" in scripts[Path("sft/run_sft.sbatch")]
    assert "\nexport BRIDGE_RECOMPUTE_LAYERS=20\n" in scripts[Path("mutinode_sft/run_sft_multinode.sbatch")]
    for script in ("ppo/run_ppo.sbatch", "mutinode_ppo/run_ppo_multinode.sbatch"):
        ppo = compose_verl("ppo_trainer", verl_argv(scripts[Path(script)], "llm_bridge.job.verl_ppo", "PPO_ARGS"))
        # Ray takes string environment values only
        assert ppo.ray_kwargs.ray_init.runtime_env.env_vars.BRIDGE_RECOMPUTE_LAYERS == "12", script
    del example["sft"]["recompute_layers"], example["rl"]["recompute_layers"]
    plain = write_team(example, "plain.yaml")
    assert not any("BRIDGE_RECOMPUTE_LAYERS" in text for text in render_all(load(plain)[0], plain, "out").values())


@pytest.mark.parametrize("stage", ["sft", "rl"])
def test_check_refuses_recompute_layers_that_cannot_work(example, write_team, tmp_path, stage):
    example[stage].update(gradient_checkpointing=False, recompute_layers=4)
    problem = problems_of(write_team, example)[f"{stage}.recompute_layers"]
    assert "gradient_checkpointing is false" in problem.message and f"{stage}.gradient_checkpointing: true" in problem.fix
    example[stage].update(gradient_checkpointing=True, activation_offload=True)
    assert f"{stage}.activation_offload: false" in problems_of(write_team, example)[f"{stage}.recompute_layers"].fix
    example[stage].update(activation_offload=False, recompute_layers=28,
                          model=model_dir(tmp_path / "m", num_hidden_layers=28, num_attention_heads=28,
                                          num_key_value_heads=4))
    problem = problems_of(write_team, example)[f"{stage}.recompute_layers"]
    assert "28 decoder layers" in problem.message and "use fewer than 28" in problem.fix
    example[stage]["recompute_layers"] = 27
    assert f"{stage}.recompute_layers" not in problems_of(write_team, example)


def test_the_plan_counts_kept_layers_and_check_says_how_many_fit(example, write_team):
    shape = find_shape("Qwen/Qwen3-32B")
    base = {**example["sft"], "model": "Qwen/Qwen3-32B", "lora": {"rank": 32, "alpha": 64}, "gradient_checkpointing": True}

    def activations(**change) -> float:
        return memory_plan.training_parts(shape, SFT(**{**base, **change}), 24, 8192)["activations"]

    every, none = activations(), activations(gradient_checkpointing=False)
    half = activations(recompute_layers=32)
    # half the layers keep every tensor (no checkpointing's cost), half only their input (checkpointing's)
    assert half == pytest.approx(every + (none - every) / 2, rel=0.02) and every < half < none
    assert activations(recompute_layers=64) == pytest.approx(every)

    example["slurm"]["nodes"] = 3
    example["sft"].update(model="Qwen/Qwen3-32B", lora={"rank": 32, "alpha": 64}, gradient_checkpointing=True,
                          max_length=8192, max_token_len_per_gpu=8192, use_liger=False)
    config, _ = load(write_team(example))
    [note] = [n for n in memory_plan.plan(config).notes if "recompute_layers" in n]
    fewest = int(note.rsplit("sft.recompute_layers: ", 1)[1].split()[0])
    assert 1 < fewest < 64 and "on 3 nodes x 8 GPUs" in note
    # what the note proposes stays within 90% of the GPU; one layer fewer recomputing would not
    stage = config.sft.model_copy(update={"recompute_layers": fewest})
    room = 0.9 * config.slurm.gpu_memory_gib

    def total(s):
        return sum(memory_plan.training_parts(shape, s, 24, 8192).values()) + memory_plan.CUDA_CONTEXT_GIB

    assert total(stage) <= room < total(stage.model_copy(update={"recompute_layers": fewest - 1}))
    # too few layers recomputing: an error whose fix is the number that fits
    example["sft"]["recompute_layers"] = 4
    problem = problems_of(write_team, example)["sft.recompute_layers"]
    assert "run out of GPU memory" in problem.message and problem.fix.startswith(f"set sft.recompute_layers: {fewest}:")


def test_a_worker_process_gets_the_patch_from_the_entrypoints():
    """verl_patches.apply (Ray's worker hook and the SFT entrypoint) installs it, also with the recipe's patches off."""
    code = ("import transformers.modeling_utils as m; from llm_bridge.job import verl_patches; verl_patches.apply(); "
            "print(getattr(m.PreTrainedModel.gradient_checkpointing_enable, 'bridge_recompute_layers', False))")
    for env in ({"BRIDGE_RECOMPUTE_LAYERS": "3"}, {"BRIDGE_RECOMPUTE_LAYERS": "3", "BRIDGE_VERL_PATCHES": "0"}):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env})
        assert out.stdout.strip() == "True", out.stderr[-2000:]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def test_the_time_plan_counts_the_recompute_skipped(example):
    """A LoRA step with checkpointing makes 6 passes of N (forward, recompute, activations' gradients); with half the
    layers keeping their activations, 5: llm-bridge plan's speed is 6/5 of every layer recomputing."""
    shape = find_shape("Qwen/Qwen3-32B")
    stage = SFT(**{**example["sft"], "model": "Qwen/Qwen3-32B", "lora": {"rank": 32, "alpha": 64},
                   "gradient_checkpointing": True})
    every, _ = time_plan.sft_mfu(shape, stage, 1)
    half, why = time_plan.sft_mfu(shape, stage.model_copy(update={"recompute_layers": 32}), 1)
    assert half == pytest.approx(every * 6 / 5) and "not measured" in why
    assert time_plan.sft_mfu(shape, stage.model_copy(update={"recompute_layers": 64}), 1)[0] == every
