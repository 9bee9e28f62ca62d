"""llm_bridge.job.moe_experts: the recipe's experts forward computes what transformers' does, values and
gradients, and the recipe's entrypoints run it in place of transformers' grouped_mm (verl_patches, patch 6)."""

import pytest
import torch
from transformers import Qwen3MoeConfig
from transformers.integrations import moe
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

from llm_bridge.job import moe_experts
from test_verl_patches import run_fresh


@pytest.fixture
def installed():
    moe_experts.install()
    yield
    del moe.ALL_EXPERTS_FUNCTIONS["grouped_mm"]  # back to transformers' own


def moe_block(dtype=torch.float32):
    torch.manual_seed(0)
    config = Qwen3MoeConfig(hidden_size=32, moe_intermediate_size=16, num_experts=8, num_experts_per_tok=3,
                            norm_topk_prob=True)
    block = Qwen3MoeSparseMoeBlock(config)
    for parameter in block.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    return block.to(dtype)


def forward_backward(block, implementation, hidden):
    """The block's output and the gradients of a fixed random projection of it: input, router, experts."""
    block.experts.config._experts_implementation = implementation
    block.zero_grad()
    hidden = hidden.detach().clone().requires_grad_()
    out = block(hidden)
    out = out[0] if isinstance(out, tuple) else out
    (out.float() * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
    return [out.detach(), hidden.grad, *(p.grad for _, p in sorted(block.named_parameters()))]


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-5), (torch.bfloat16, 3e-2)])
def test_values_and_gradients_equal_transformers_eager_experts(installed, dtype, tol):
    """Every expert is hit by 22 tokens x top-3 routes over 8 experts, some by several tokens; some tokens' routes
    share an expert's rows. Router (gate.weight) gradients flow through the routing weights."""
    block = moe_block(dtype)
    hidden = torch.randn(2, 11, 32).to(dtype)
    reference = forward_backward(block, "eager", hidden)
    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return moe_experts.grouped_experts_forward(*args, **kwargs)

    moe.ALL_EXPERTS_FUNCTIONS["grouped_mm"] = spy
    got = forward_backward(block, "grouped_mm", hidden)
    assert calls == [1]
    for name, want, have in zip(["output", "input grad", "down_proj", "gate_up_proj", "router"], reference, got):
        scale = want.float().abs().max()
        assert (have.float() - want.float()).abs().max() <= tol * scale, name


def test_blocks_it_does_not_cover_run_transformers_forward(installed, monkeypatch):
    block = moe_block()
    monkeypatch.setattr(block.experts, "has_bias", True)  # e.g. gpt-oss: transformers adds the biases
    seen = []
    monkeypatch.setattr(moe, "grouped_mm_experts_forward", lambda *args: seen.append(1) or args[1])
    hidden = torch.randn(5, 32)
    assert moe_experts.grouped_experts_forward(block.experts, hidden, torch.zeros(5, 3, dtype=torch.long),
                                               torch.ones(5, 3)) is hidden
    assert seen == [1]


RUN_TINY_MOE = """
import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
from llm_bridge.job import verl_patches
verl_patches.apply()
from llm_bridge.job import moe_experts
from transformers.integrations import moe
model = Qwen3MoeForCausalLM(Qwen3MoeConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2))
calls = []
forward = moe.ALL_EXPERTS_FUNCTIONS["grouped_mm"]
moe.ALL_EXPERTS_FUNCTIONS["grouped_mm"] = lambda *a: calls.append(1) or forward(*a)
model(torch.randint(0, 64, (1, 9))).logits.sum().backward()
print(model.config._experts_implementation, forward is moe_experts.grouped_experts_forward, len(calls))
"""


@pytest.mark.parametrize("off, printed", [(None, "grouped_mm True 2"), ("grouped_experts", "grouped_mm False 2")])
def test_the_entrypoints_patches_put_it_under_transformers_default(off, printed):
    """A model built after verl_patches.apply() runs it in each MoE layer; BRIDGE_VERL_PATCHES_OFF leaves
    transformers' own."""
    done = run_fresh(RUN_TINY_MOE, BRIDGE_VERL_PATCHES_OFF=off, BRIDGE_VERL_PATCHES=None)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == printed
