"""Big-model settings (sequence_parallel, cpu_offload, activation_offload) reach verl 0.9.1's own keys, and what
verl would meet only at run time is refused by check first: head counts against the sequence-parallel size
(from the model's config.json, in a directory or in the team's HF cache), offload without FSDP2, token budgets,
LoRA all-linear on a mixture-of-experts model."""

import json
from pathlib import Path

import pytest

from llm_bridge.login.loader import load
from llm_bridge.login.render import render_all
from llm_bridge.login.rules import check
from test_verl_config import compose_verl, verl_argv


def problems_of(write_team, data, severity="error"):
    config, problems = load(write_team(data))
    assert config is not None, problems
    return {p.field: p for p in check(config, local_paths=True) if p.severity == severity}


def model_dir(root: Path, **shape) -> str:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "qwen3", **shape}))
    return str(root)


@pytest.mark.parametrize("stage", ["sft", "rl"])
def test_sequence_parallel_must_divide_the_heads(example, write_team, tmp_path, stage):
    example[stage]["model"] = model_dir(tmp_path / "m", num_attention_heads=28, num_key_value_heads=4)  # Qwen2.5-7B
    example[stage]["sequence_parallel"] = 8
    problem = problems_of(write_team, example)[f"{stage}.sequence_parallel"]
    assert "does not divide" in problem.message and "28 attention heads" in problem.message
    assert problem.fix == "use one of [2, 4]"  # 7 divides the heads, not a node of 8 GPUs
    example[stage]["sequence_parallel"] = 4
    assert f"{stage}.sequence_parallel" not in problems_of(write_team, example)


def test_sequence_parallel_and_kv_heads_must_divide_one_another(example, write_team, tmp_path):
    example["sft"]["model"] = model_dir(tmp_path / "m", num_attention_heads=24, num_key_value_heads=6)
    example["sft"]["sequence_parallel"] = 4
    problem = problems_of(write_team, example)["sft.sequence_parallel"]
    assert "6 key/value heads" in problem.message and "multiple of 6" in problem.fix
    example["sft"]["model"] = model_dir(tmp_path / "q3", num_attention_heads=64, num_key_value_heads=8)  # Qwen3-32B
    assert "sft.sequence_parallel" not in problems_of(write_team, example)


def test_a_hub_id_is_read_from_the_team_cache_and_a_missing_one_is_a_warning(example, write_team, tmp_path):
    example["paths"]["hf_home"] = str(tmp_path / "hf")
    repo = tmp_path / "hf" / "hub" / "models--Org--Model-7B"
    model_dir(repo / "snapshots" / "abc123", num_attention_heads=28, num_key_value_heads=4)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    example["sft"].update(model="Org/Model-7B", sequence_parallel=8)
    assert "28 attention heads" in problems_of(write_team, example)["sft.sequence_parallel"].message
    example["sft"]["model"] = "Org/Not-Downloaded"
    assert "sft.sequence_parallel" not in problems_of(write_team, example)
    warning = problems_of(write_team, example, "warning")["sft.model"]
    assert "not checked" in warning.message and "hf download Org/Not-Downloaded config.json" in warning.fix


def test_sequence_parallel_must_divide_a_node(example, write_team):
    example["rl"]["sequence_parallel"] = 3
    config, _ = load(write_team(example))
    node, heads = [p for p in check(config, local_paths=True) if p.field == "rl.sequence_parallel"]
    assert "8 GPUs of a node" in node.message and "2, 4, 8" in node.fix
    assert "14 attention heads" in heads.message and heads.fix == "use one of [2]"  # 7 divides no node of 8 GPUs


@pytest.mark.parametrize("stage", ["sft", "rl"])
def test_sequence_parallel_needs_flash_attention(example, write_team, stage):
    """verl's Ulysses lives in `_ulysses_flash_attention_forward`: sdpa, flex and eager never exchange heads."""
    example[stage].update(sequence_parallel=2, attn_implementation="sdpa")
    problem = problems_of(write_team, example)[f"{stage}.sequence_parallel"]
    assert "only inside its flash-attention forward" in problem.message and "silently" in problem.message
    assert problem.fix.startswith(f"set {stage}.attn_implementation: flash_attention_2")
    example[stage]["attn_implementation"] = "flash_attention_2"
    assert f"{stage}.sequence_parallel" not in problems_of(write_team, example)


def test_token_budgets_count_the_sequence_parallel_gpus(example, write_team):
    """verl packs max_token_len_per_gpu x sp tokens per micro-batch: a 32k sample fits 8192 x 4."""
    example["sft"].update(max_length=32768, max_token_len_per_gpu=8192, sequence_parallel=4)
    assert "sft.max_token_len_per_gpu" not in problems_of(write_team, example)
    example["sft"]["sequence_parallel"] = 2
    assert problems_of(write_team, example)["sft.max_token_len_per_gpu"].fix == "set it to at least 16384"
    example["rl"].update(max_prompt_length=1024, max_response_length=31744, ppo_max_token_len_per_gpu=8192,
                         sequence_parallel=2)
    problem = problems_of(write_team, example)["rl.ppo_max_token_len_per_gpu"]
    assert "x rl.sequence_parallel 2" in problem.message and "at least 16384" in problem.fix


@pytest.mark.parametrize("stage", ["sft", "rl"])
def test_cpu_offload_needs_fsdp2(example, write_team, stage):
    example[stage].update(cpu_offload=True, strategy="fsdp")
    problem = problems_of(write_team, example)[f"{stage}.cpu_offload"]
    assert "FSDP2 only" in problem.message and problem.fix == f"set {stage}.strategy: fsdp2"
    example[stage]["strategy"] = "fsdp2"
    assert f"{stage}.cpu_offload" not in problems_of(write_team, example)


def test_lora_all_linear_on_a_mixture_of_experts_is_refused(example, write_team, tmp_path):
    """PEFT 0.21 turns all-linear on Qwen3-MoE into adapters on every expert and the router (target_parameters)."""
    example["sft"]["model"] = model_dir(tmp_path / "moe", num_attention_heads=32, num_key_value_heads=4, num_experts=128)
    example["sft"]["lora"] = {"rank": 32, "alpha": 64}
    problem = problems_of(write_team, example)["sft.lora.target_modules"]
    assert "router" in problem.message and "[q_proj, k_proj, v_proj, o_proj]" in problem.fix
    assert "target_parameters: [mlp.experts.gate_up_proj, mlp.experts.down_proj]" in problem.fix
    example["sft"]["lora"].update(target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                  target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])
    assert not {"sft.lora.target_modules", "sft.lora.target_parameters"} & problems_of(write_team, example).keys()

    # expert adapters are for SFT, and for a model that has experts
    example["rl"].update(model=example["sft"]["model"], lora=dict(example["sft"]["lora"]))
    assert "expert adapters are for SFT" in problems_of(write_team, example)["rl.lora.target_parameters"].message
    example["sft"]["model"] = model_dir(tmp_path / "dense", num_attention_heads=32, num_key_value_heads=4)
    assert "not a mixture-of-experts model" in problems_of(write_team, example)["sft.lora.target_parameters"].message


def test_big_model_settings_reach_verl(example, write_team):
    example["sft"].update(sequence_parallel=4, cpu_offload=True, strategy="fsdp2", activation_offload=True,
                          lora={"rank": 8, "alpha": 16, "target_modules": ["q_proj"],
                                "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]})
    example["rl"].update(sequence_parallel=2, cpu_offload=True, strategy="fsdp2", activation_offload=True,
                         algorithm="ppo")
    team = write_team(example)
    config, problems = load(team)
    assert config is not None, problems
    scripts = render_all(config, team, "out")
    sft = compose_verl("sft_trainer_engine", verl_argv(scripts[Path("sft/run_sft.sbatch")], "llm_bridge.job.verl_sft", "SFT_ARGS"))
    assert sft.engine.ulysses_sequence_parallel_size == 4 and sft.engine.offload_policy is True
    assert sft.engine.strategy == "fsdp2" and sft.model.enable_activation_offload is True
    assert list(sft.model.target_parameters) == ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
    ppo = compose_verl("ppo_trainer", verl_argv(scripts[Path("ppo/run_ppo.sbatch")], "llm_bridge.job.verl_ppo", "PPO_ARGS"))
    ref = ppo.actor_rollout_ref
    assert ref.actor.fsdp_config.ulysses_sequence_parallel_size == 2 == ref.ref.fsdp_config.ulysses_sequence_parallel_size
    assert ref.actor.fsdp_config.offload_policy is True and ref.model.enable_activation_offload is True
    assert ppo.critic.ulysses_sequence_parallel_size == 2 and ppo.critic.fsdp.offload_policy is True
    # not set: verl's defaults, and nothing new on the command line
    for stage in ("sft", "rl"):
        for key in ("sequence_parallel", "cpu_offload", "activation_offload", "lora"):
            example[stage].pop(key, None)
    plain = write_team(example, "plain.yaml")
    for text in render_all(load(plain)[0], plain, "out").values():
        assert "ulysses" not in text and "offload_policy" not in text and "activation_offload" not in text
        assert "target_parameters" not in text


@pytest.mark.parametrize("shape, billions", [
    (dict(num_hidden_layers=64, hidden_size=5120, num_attention_heads=64, num_key_value_heads=8, head_dim=128,
          intermediate_size=25600), 32.8),  # Qwen3-32B
    (dict(num_hidden_layers=48, hidden_size=2048, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
          intermediate_size=6144, moe_intermediate_size=768, num_experts=128), 30.5),  # Qwen3-30B-A3B
    (dict(num_hidden_layers=94, hidden_size=4096, num_attention_heads=64, num_key_value_heads=4, head_dim=128,
          intermediate_size=12288, moe_intermediate_size=1536, num_experts=128), 235.1),  # Qwen3-235B-A22B
])
def test_model_size_counts_every_expert(tmp_path, shape, billions):
    """The published sizes from config.json values (Qwen3's: untied embeddings, vocabulary 151,936)."""
    from llm_bridge.login.model_shape import model_billions

    path = model_dir(tmp_path / "m", vocab_size=151936, tie_word_embeddings=False, **shape)
    assert model_billions(path) == pytest.approx(billions, abs=0.05)


def test_samples_longer_than_max_length_are_counted_with_the_models_tokenizer(example, write_team, tmp_path):
    """Reasoning data of 16k-32k tokens against sft.max_length: truncation error would stop verl mid-run at the first
    long sample, right cuts the sample's end (its answer). Counted with the model's own tokenizer.json."""
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    from conftest import REPO
    sys.path.insert(0, str(REPO / "tests" / "cpu"))
    import build_tiny

    build_tiny.main(tmp_path / "tiny")
    words = "Tom has 3 apples and gets 4 more. How many apples does Tom have now? "
    rows = [[{"role": "user", "content": words * 2}, {"role": "assistant", "content": words * n}] for n in (2, 40, 80)]
    pq.write_table(pa.table({"messages": rows}), tmp_path / "train.parquet")
    example["sft"].update(model=str(tmp_path / "tiny" / "model"), train_files=str(tmp_path / "train.parquet"),
                          max_length=512, truncation="error")
    problem = problems_of(write_team, example)["sft.max_length"]
    assert "2 of 3 samples" in problem.message and "longer than sft.max_length 512" in problem.message
    assert "stops at the first of them" in problem.message and problem.fix.startswith("set sft.max_length: ")
    longest = int(problem.fix.split(": ")[1].split()[0])
    assert 1024 <= longest <= 4096 and longest % 1024 == 0

    example["sft"]["truncation"] = "right"
    warning = problems_of(write_team, example, "warning")["sft.max_length"]
    assert "cuts them" in warning.message and "answer" in warning.message
    example["sft"].update(max_length=longest, max_token_len_per_gpu=longest)
    assert "sft.max_length" not in problems_of(write_team, example, "warning")


def test_grpo_lora_of_a_70b_model_needs_fsdp2(example, write_team):
    """verl's layer-by-layer adapter sync (rendered for 70B+) finds nothing under FSDP1, whose LoRA matrices are units
    of their own, and then gathers the whole model on every rank (tests/test_verl_patches.py has the FSDP1 side)."""
    example["rl"].update(model="Qwen/Qwen2.5-72B-Instruct", lora={"rank": 32, "alpha": 64}, strategy="fsdp")
    problem = problems_of(write_team, example)["rl.strategy"]
    assert "70B or more" in problem.message and problem.fix == "set rl.strategy: fsdp2"
    example["rl"]["strategy"] = "fsdp2"
    assert "rl.strategy" not in problems_of(write_team, example)
    example["rl"].update(model="Qwen/Qwen3-32B", strategy="fsdp")  # below 70B: one gather of the adapter, FSDP1 is fine
    assert "rl.strategy" not in problems_of(write_team, example)
