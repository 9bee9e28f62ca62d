"""The MoE experts' forward for training: transformers' grouped_mm path without its per-element overhead.

transformers 5 runs a Qwen3-MoE (and DeepSeek-V3) experts block with `grouped_mm_experts_forward`: one
grouped GEMM for every expert's gate/up and one for down, which is right. Around them it spends more
GPU time than in the GEMMs themselves. In one LoRA SFT step of the Qwen3-30B-A3B shape on an H200
(8k tokens, 48 layers; docs/benchmarks.md) its two `masked_fill_` calls over every routed row (kept for
expert parallelism, which verl's FSDP engine does not use) took 102 ms, the routing weight applied to
the hidden-size output and the other broadcast multiplies 121 ms, and the backward of its
`hidden_states[perm // top_k]` gather, an accumulating `index_put_` that sorts its indices, 30 ms of GPU
and 176 ms of the GPU waiting for the CPU, against 130 ms for the grouped GEMMs.

This forward computes the same function with the same grouped GEMMs, and:
- moves rows between token order and expert order with gathers whose backward is a gather too (each
  routed row is one (token, k) slot, so the permutation is known both ways; no accumulating scatter);
- applies the routing weight to the intermediate activation (moe_intermediate_size wide, 768 for
  Qwen3-30B-A3B against a hidden size of 2,048) before the down projection, which is linear;
- has no sentinel masking: every expert id is below num_experts without expert parallelism.

The recipe's entrypoints install it under transformers' own name for the default, "grouped_mm"
(llm_bridge.job.verl_patches, patch 6), so every experts block that would have run transformers'
grouped_mm runs this one. Blocks it does not cover (biases, interleaved or ungated experts, a custom
gate) run transformers' function unchanged.
"""

import torch
from transformers.integrations import moe


class _ToExpertOrder(torch.autograd.Function):
    """hidden[token_of]: each routed slot's token row, slots sorted by expert. The backward brings each
    slot's gradient back to (token, k) order and sums a token's top_k slots."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, token_of: torch.Tensor, inverse: torch.Tensor, top_k: int):
        ctx.save_for_backward(inverse)
        ctx.top_k = top_k
        return hidden.index_select(0, token_of)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        per_slot = grad.index_select(0, inverse)
        return per_slot.view(-1, ctx.top_k, grad.shape[-1]).sum(dim=1), None, None, None


class _ToTokenOrder(torch.autograd.Function):
    """The sum of each token's top_k expert outputs. The backward gives every slot its token's gradient."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, inverse: torch.Tensor, token_of: torch.Tensor, top_k: int):
        ctx.save_for_backward(token_of)
        return rows.index_select(0, inverse).view(-1, top_k, rows.shape[-1]).sum(dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (token_of,) = ctx.saved_tensors
        return grad.index_select(0, token_of), None, None, None


def covers(experts: torch.nn.Module) -> bool:
    """Packed [gate; up] experts without biases and with transformers' default gate (Qwen3-MoE, DeepSeek-V3)."""
    return (getattr(experts, "has_gate", False) and not getattr(experts, "has_bias", True)
            and getattr(experts, "is_concatenated", False)
            and getattr(type(experts), "_apply_gate", None) is moe._default_apply_gate)


def grouped_experts_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                            top_k_weights: torch.Tensor) -> torch.Tensor:
    if not covers(self):
        return moe.grouped_mm_experts_forward(self, hidden_states, top_k_index, top_k_weights)
    top_k = top_k_index.shape[-1]
    expert_of = top_k_index.reshape(-1)
    order = torch.argsort(expert_of, stable=True)  # slot order -> expert order
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    token_of = order // top_k
    # histc, not bincount: bincount waits for the GPU to size its output. histc counts floats on the CPU.
    counts = torch.histc(expert_of.float() if expert_of.device.type == "cpu" else expert_of.int(),
                         bins=self.num_experts, min=0, max=self.num_experts - 1)
    offsets = torch.cumsum(counts, dim=0, dtype=torch.int32)

    rows = _ToExpertOrder.apply(hidden_states, token_of, inverse, top_k)
    gate, up = moe._grouped_linear(rows, self.gate_up_proj, offsets, is_transposed=self.is_transposed).chunk(2, dim=-1)
    weight = top_k_weights.reshape(-1).index_select(0, order).unsqueeze(-1).to(up.dtype)
    intermediate = self.act_fn(gate) * (up * weight)
    out = moe._grouped_linear(intermediate, self.down_proj, offsets, is_transposed=self.is_transposed)
    return _ToTokenOrder.apply(out, inverse, token_of, top_k).to(hidden_states.dtype)


def install() -> None:
    """Run grouped_experts_forward wherever transformers would run its grouped_mm experts (idempotent)."""
    moe.ALL_EXPERTS_FUNCTIONS["grouped_mm"] = grouped_experts_forward
