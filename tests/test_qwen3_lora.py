"""LoRA SFT of the architectures the teams fine-tune, through the rendered script on 2 ranks, then merged: a tiny
Qwen3 (dense, all-linear) and a tiny Qwen3-MoE (attention, and attention plus the experts through
lora.target_parameters; all-linear on MoE is refused by check). The merged model's logits equal PEFT's base + adapter
(verl's merger output with its config repaired) to 1e-4. The dense model trains with attn_implementation sdpa_cudnn
(torch's math kernel on a CPU), through verl's own model building and remove-padding.

Ulysses sequence parallelism is not run here: verl 0.9.1 splits the heads only inside its flash-attention forward
(`_ulysses_flash_attention_forward`), and flash-attn has no CPU kernel; with sdpa each rank would attend within its
own slice of the sequence. gloo's all_to_all itself works on CPU. `check` refuses sequence_parallel without
flash_attention_2 (tests/test_big_model_rules.py)."""

import sys

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "tests" / "cpu"))
import build_tiny  # noqa: E402
import pipeline  # noqa: E402
from test_merge import _logits, bridge_merge  # noqa: E402

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    work = tmp_path_factory.mktemp("qwen3")
    stage = pipeline.Stage(work)
    pipeline.prepare(work, stage)
    return work, stage


EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


@pytest.mark.parametrize("arch, targets, parameters, folded", [
    ("qwen3", "all-linear", None, 14),
    ("qwen3_moe", ATTENTION, None, 8),
    # and the experts: 2 layers x 4 experts x (gate, up, down) from PEFT's packed-parameter pairs, + 8 attention
    ("qwen3_moe", ATTENTION, EXPERTS, 32),
])
def test_lora_sft_of_qwen3_trains_and_merges(prepared, arch, targets, parameters, folded):
    work, stage = prepared
    base = work / "tiny" / arch
    if not base.exists():
        build_tiny.build_qwen3(work / "tiny" / "model", base, moe=arch.endswith("moe"))
    name = arch + ("-experts" if parameters else "")
    team = pipeline.team_config(work)
    if arch == "qwen3":
        team["sft"]["attn_implementation"] = "sdpa_cudnn"
        # checkpointing on the first of the 2 decoder layers only (llm_bridge/job/partial_recompute.py)
        team["sft"].update(gradient_checkpointing=True, recompute_layers=1)
    team["sft"].update(experiment_name=f"lora-{name}", model=str(base),
                       lora={"rank": 4, "alpha": 8, "base_dtype": "fp32", "target_modules": targets,
                             **({"target_parameters": parameters} if parameters else {})})
    rendered = pipeline.render(work, team, f"rendered-{name}")
    stage.run(f"sft-{name}", pipeline.sft_command(rendered, "optim.lr=1e-2", "trainer.total_training_steps=2"),
              pipeline.CPU_ENV)
    losses = [m["data"]["train/loss"] for m in pipeline.metrics(work / "logs", f"lora-{name}") if "train/loss" in m["data"]]
    assert len(losses) == 2 and losses[1] < losses[0], losses
    if arch == "qwen3":
        assert "gradient checkpointing on 1 of 2 decoder layers" in (work / "logs" / f"sft-{name}.log").read_text()

    run = work / "checkpoints" / "sft" / f"lora-{name}"
    merged = work / "models" / f"lora-{name}"
    result = bridge_merge("--checkpoint", run, "--out", merged, "--base", base)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"Folded the adapter into {folded} weights" in result.stdout
    after, reference, before = _logits(merged), _logits(base, merged / "lora_adapter"), _logits(base)
    assert (after - before).abs().max() > 1e-3, "the adapter changed the model"
    assert torch.allclose(after, reference, atol=1e-4), (after - reference).abs().max()
