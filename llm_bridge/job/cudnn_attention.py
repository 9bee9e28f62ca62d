"""Training attention on cuDNN: team.yaml `attn_implementation: sdpa_cudnn` (SFT and the GRPO actor).

One attention layer of the Qwen3-32B shape (64 query heads, 8 key/value heads, head_dim 128), causal, forward and
backward in bf16 on an H100 (benchmarks/attention_bench.py, docs/benchmarks.md): flash-attn 2, what verl calls with
remove-padding, 11.9 / 44.5 / 177 ms at 8k / 16k / 32k tokens; torch's SDPA on cuDNN with grouped key/value heads
7.0 / 27.6 / 111 ms, 1.6-1.7x faster; compiled flex_attention 0.9-1.07x of flash-attn. Attention is about a third
of the GPU time of a 32B LoRA SFT step at 8k tokens.

verl's remove-padding packs a micro-batch's sequences into one row and passes position_ids. This function attends
each sequence of the row on its own (SDPA, causal, grouped key/value heads), cuDNN first in the order of backends
(torch falls back to flash, memory-efficient, then math where cuDNN cannot run a case, and on a CPU). The
sequences' boundaries come from verl_patches (patch 3) once per micro-batch, on the host, so the layers never wait
for the GPU; without them they are read from position_ids (a new sequence starts at position 0).
"""

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

NAME = "sdpa_cudnn"
BACKENDS = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def boundaries(rows: int, length: int, kwargs: dict) -> list[int]:
    """Where the packed row's sequences start, and its end; one sequence a row where nothing says otherwise."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None and kwargs.get("position_ids") is not None and rows == 1:
        starts = (kwargs["position_ids"][0] == 0).nonzero().flatten()
        cu = torch.cat([starts, starts.new_tensor([length])]) if starts.numel() and starts[0] == 0 else None
    if cu is None:
        return [0, length]
    if rows != 1:
        raise ValueError(f"attn_implementation {NAME}: {rows} rows with sequence boundaries; verl's remove-padding "
                         "packs a micro-batch into one row")
    return [int(b) for b in cu.tolist()]


def packed_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                        is_causal=None, **kwargs):
    """transformers' attention interface: query [rows, heads, tokens, head_dim], key and value with their own
    (fewer) heads; returns [rows, tokens, heads, head_dim] and no weights."""
    if attention_mask is not None:
        raise ValueError(f"attn_implementation {NAME} attends packed sequences and takes no padding mask. Fix: keep "
                         f"verl's remove-padding on (the recipe's default), or use attn_implementation flash_attention_2")
    bounds = boundaries(query.shape[0], query.shape[2], kwargs)
    grouped = query.shape[1] != key.shape[1]
    dropout = dropout if module.training else 0.0
    with sdpa_kernel(BACKENDS, set_priority=True):
        parts = [F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], dropout_p=dropout,
                                                scale=scaling, is_causal=True, enable_gqa=grouped)
                 for a, b in zip(bounds, bounds[1:])]
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
    return out.transpose(1, 2).contiguous(), None


def install() -> None:
    """Make `sdpa_cudnn` an attention implementation transformers' models accept (idempotent), with flash
    attention's mask: none for packed rows (no 4D mask of tokens squared), and a padding mask passed on (refused)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(NAME, packed_sdpa_forward)
    AttentionMaskInterface.register(NAME, flash_attention_mask)
