"""Workarounds for verl 0.9.1, applied by the recipe's entrypoints (llm_bridge.verl_sft, llm_bridge.verl_ppo).

Label log-probs without flash-attn. verl computes each token's log-prob with flash-attn's Triton
cross-entropy when flash-attn is installed; otherwise it falls back to `logprobs_from_logits_v2`,
which loops in Python over every token (one log_softmax kernel per row, forward and backward).
With 8k tokens per micro-batch that loop is most of the step: SFT of a 0.5B model ran at 2% MFU on
an H100 (docs/benchmarks.md). This replacement does the same arithmetic in chunks of rows and keeps
only the logits for the backward pass, as flash-attn's kernel does: the memory stays that of the
logits, the kernel count drops from O(tokens) to O(tokens / CHUNK).
"""

import os

import torch

CHUNK = 4096  # rows per chunk: 4096 x 151,936 vocabulary x 4 bytes = 2.5 GB of float32 at a time


class LabelLogProbs(torch.autograd.Function):
    """log_softmax(logits)[label] for 2-D logits, in float32, chunked over rows."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for start in range(0, logits.shape[0], CHUNK):
            lse[start:start + CHUNK] = torch.logsumexp(logits[start:start + CHUNK].float(), dim=-1)
        picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1).float()
        ctx.save_for_backward(logits, labels, lse)
        return picked - lse

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, labels, lse = ctx.saved_tensors
        grad_logits = torch.empty_like(logits)
        for start in range(0, logits.shape[0], CHUNK):
            rows = slice(start, start + CHUNK)
            g = grad[rows].float().unsqueeze(-1)
            chunk = torch.exp(logits[rows].float() - lse[rows].unsqueeze(-1)).mul_(-g)  # d/dx = onehot - softmax
            chunk.scatter_add_(-1, labels[rows].unsqueeze(-1), g)
            grad_logits[rows] = chunk.to(logits.dtype)
        return grad_logits, None


def label_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    shape = labels.shape
    return LabelLogProbs.apply(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)).view(shape)


def apply() -> None:
    """Patch verl in this process. Idempotent; a no-op where flash-attn's kernel is used anyway.
    Ray runs it in every worker process of a PPO job (runtime_env worker_process_setup_hook).
    BRIDGE_VERL_PATCHES=0 leaves verl as released (for benchmarks)."""
    from verl.utils import torch_functional

    if os.environ.get("BRIDGE_VERL_PATCHES", "1") == "0":
        return
    if torch_functional.logprobs_from_logits_v2 is not label_logprobs:
        torch_functional.logprobs_from_logits_v2 = label_logprobs
        if not torch_functional.FLAH_ATTN_CROSS_ENTROPY_LOSS_AVAILABLE:
            print("llm_bridge: no flash-attn: verl's label log-probs use the chunked kernel (llm_bridge.verl_patches)",
                  flush=True)
