"""The memory planner behind `check`: each stage's peak GPU memory per GPU and host memory per node, from the model's
shape, against slurm.gpu_memory_gib and slurm.host_memory_gib; a stage that cannot fit is an error naming the field
and a fix that does fit."""

import subprocess
import sys

import pytest

from llm_bridge.login.config import SFT, LoRA
from llm_bridge.login.loader import load
from llm_bridge.login.memory_plan import plan, training_parts
from llm_bridge.login.model_shape import find_shape
from llm_bridge.login.rules import check

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


def problems_of(write_team, data, severity="error"):
    config, problems = load(write_team(data))
    assert config is not None, problems
    return {p.field: p for p in check(config, local_paths=False) if p.severity == severity}


# torch's peak allocated memory on one H200 (benchmarks/sft_bench.py, docs/benchmarks.md "メモリの見積もり"):
# one micro-batch of exactly `tokens` tokens, the recipe's SFT entrypoint with flash-attn.
MEASURED = [
    ("Qwen/Qwen2.5-0.5B-Instruct", None, False, 32768, 45.2),         # full fine-tuning, no checkpointing
    ("Qwen/Qwen2.5-1.5B-Instruct", None, False, 16384, 54.4),
    ("Qwen/Qwen3-32B", "all-linear", True, 8062, 70.3),               # LoRA r32, bf16 base, checkpointing
    ("Qwen/Qwen3-30B-A3B", ATTENTION, True, 8067, 61.0),
    ("Qwen/Qwen3-30B-A3B", ATTENTION, True, 16161, 64.9),  # two 8k samples in one micro-batch
]


@pytest.mark.parametrize("model, targets, checkpointing, tokens, measured", MEASURED)
def test_the_plan_predicts_measured_peaks_within_ten_percent(example, model, targets, checkpointing, tokens, measured):
    lora = LoRA(rank=32, alpha=64, target_modules=targets) if targets else None
    stage = SFT(**{**example["sft"], "model": model, "lora": lora, "gradient_checkpointing": checkpointing})
    estimate = sum(training_parts(find_shape(model), stage, 1, tokens).values())
    assert estimate == pytest.approx(measured, rel=0.10), f"{model}: planned {estimate:.1f} GiB, measured {measured}"


def test_a_stage_that_cannot_fit_is_an_error_whose_fixes_fit(example, write_team):
    example["sft"].update(model="Qwen/Qwen3-32B", max_token_len_per_gpu=16384, max_length=16384)
    assert example["sft"]["gradient_checkpointing"] is False
    problem = problems_of(write_team, example)["sft.gradient_checkpointing"]
    assert "needs ~221 GiB per GPU on 3 nodes x 8 GPUs" in problem.message and "slurm.gpu_memory_gib 79.65" in problem.message
    assert problem.fix.startswith("set sft.gradient_checkpointing: true: ~46 GiB per GPU")
    assert "set sft.lora: {rank: 32, alpha: 64}" in problem.fix and "sft.cpu_offload: true" in problem.fix

    example["sft"]["gradient_checkpointing"] = True
    assert not {"sft.gradient_checkpointing", "sft.model"} & problems_of(write_team, example).keys()
    # the single-node script of the same team would not fit: a warning, the multi-node one is the way
    warning = problems_of(write_team, example, "warning")["sft.model"]
    assert "the single-node sft script would need ~" in warning.message and "multi-node script" in warning.fix

    example["slurm"]["gpu_memory_gib"] = 40  # a smaller GPU
    assert "sft.lora" in problems_of(write_team, example)


def test_671b_cannot_be_trained_on_three_nodes_and_the_plan_says_what_would(example, write_team):
    example["slurm"]["host_memory_gib"] = 1000
    example["sft"].update(model="deepseek-ai/DeepSeek-R1", gradient_checkpointing=True, max_token_len_per_gpu=16384,
                          max_length=16384, lora={"rank": 32, "alpha": 64, "target_modules": ["q_proj", "o_proj"]})
    config, _ = load(write_team(example))
    problems = [p for p in check(config, local_paths=False) if p.field == "sft.model" and p.severity == "error"]
    gpu, host = problems
    assert "cannot be trained on 3 nodes x 8 GPUs of 79.65 GiB with verl's FSDP engine" in gpu.message
    assert "21 GiB decoder layer" in gpu.message and "22 nodes" in gpu.fix
    assert "~1250 GiB of host memory" in host.message and "slurm.host_memory_gib 1000" in host.message

    example["slurm"]["host_memory_gib"] = 2048  # with the room, FSDP2's CPU offload is the fix
    problem = problems_of(write_team, example)["sft.cpu_offload"]
    assert "sft.strategy: fsdp2" in problem.fix and "GiB of host memory on the first node" in problem.fix


def test_vllm_needs_room_for_the_kv_cache_beside_its_weights(example, write_team):
    example["rl"].update(model="Qwen/Qwen3-32B", gradient_checkpointing=True, ppo_max_token_len_per_gpu=16384,
                         lora={"rank": 32, "alpha": 64})
    problem = problems_of(write_team, example)["rl.rollout_tp"]
    assert "61 GiB of bf16 weights per GPU with tensor parallel 1" in problem.message
    assert problem.fix == "set rl.rollout_tp: 4"
    example["rl"]["rollout_tp"] = 4
    assert "rl.rollout_tp" not in problems_of(write_team, example)


def test_gpu_and_host_memory_must_be_positive(example, write_team):
    for key in ("gpu_memory_gib", "host_memory_gib"):
        bad = {**example, "slurm": {**example["slurm"], key: 0}}
        config, problems = load(write_team(bad))
        assert config is None and any(p.field == f"slurm.{key}" for p in problems)


def test_grpo_on_the_sft_output_is_planned_with_the_sft_models_shape(example, write_team):
    example["sft"]["model"] = "Qwen/Qwen3-8B"
    example["rl"]["model"] = example["paths"]["checkpoints"] + "/sft/merged"
    config, _ = load(write_team(example))
    result = plan(config)
    assert any("planned with sft.model's shape (Qwen/Qwen3-8B)" in n for n in result.notes)
    assert [r.stage for r in result.rows].count("rl update") == 2


def test_check_prints_the_plan(example, write_team):
    done = subprocess.run([sys.executable, "-m", "llm_bridge.cli", "check", "--team", str(write_team(example))],
                          capture_output=True, text=True)
    assert "Memory plan, GiB per GPU" in done.stdout
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("  sft ")]
    assert [r[1:5] for r in rows] == [["1", "node", "x", "8"], ["3", "nodes", "x", "8"]]


def test_activation_offload_moves_the_saved_activations_to_the_host(example, write_team):
    """activation_offload frees the GPU of what the forward pass keeps for the backward pass and puts it in host
    memory, once per GPU of the node: without checkpointing that is every layer's tensors."""
    example["slurm"]["host_memory_gib"] = 1000
    example["sft"].update(model="Qwen/Qwen3-32B", max_token_len_per_gpu=16384, max_length=16384,
                          lora={"rank": 32, "alpha": 64}, activation_offload=True)
    config, _ = load(write_team(example))
    [sft] = [row for row in plan(config).rows if row.stage == "sft" and row.layout.startswith("3 nodes")]
    assert sft.parts["activations"] < 10  # two layers' worth on the GPU, not 188 GiB
    problem = problems_of(write_team, example)["sft.model"]
    assert "offloaded activations" in problem.message and "more than slurm.host_memory_gib 1000" in problem.message
    assert problem.fix.startswith("set sft.gradient_checkpointing: true")

    example["sft"]["gradient_checkpointing"] = True  # only each layer's input: 64 x 16384 x 5120 x 2 bytes per GPU
    config, _ = load(write_team(example))
    assert "sft.model" not in problems_of(write_team, example)
    assert any("offloaded activations 80" in line for line in plan(config).host)
