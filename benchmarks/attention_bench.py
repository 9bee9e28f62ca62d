"""One attention layer's forward and backward at long sequence lengths: flash-attn 2 (the recipe's default) against
PyTorch's other kernels, for the attention share of LoRA SFT on Qwen3-32B (issue 37: a third of the GPU time at 8k).

    python benchmarks/attention_bench.py [--arch qwen3-32b] [--lengths 8192,16384,32768] [--samples 1,2] [--iters 10]

Causal attention over `samples` packed sequences of `length` tokens each (bf16, the model's query and key/value head
counts, head_dim), query/key/value requiring gradients. Per kernel: milliseconds per forward+backward (CUDA events
after warm-up) and the largest difference from flash-attn 2's output and query/key/value gradients, each relative to
its scale; a kernel that cannot run a case says why. Kernels:
  flash2        flash_attn_varlen_func (what verl calls with remove-padding)
  cudnn         torch SDPA with the cuDNN backend, key/value heads repeated to the query's (one sequence only)
  cudnn-gqa     the same with enable_gqa (no repeat)
  sdpa_cudnn    the recipe's attn_implementation sdpa_cudnn (llm_bridge/job/cudnn_attention.py): cudnn-gqa a sequence
                at a time, packed sequences included
  flex          torch.compile'd flex_attention with a block mask of the packed sequences (GQA native)
GPU only.
"""

import argparse
import json
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from common import QWEN3_ARCHS, cuda_ms


def timed(fn, q, k, v, grad, iters: int) -> tuple[float, list[torch.Tensor]]:
    """Milliseconds per forward+backward, and the output with the gradients of query, key and value."""
    def step():
        qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
        out = fn(qq, kk, vv)
        out.backward(grad)
        return [out.detach(), qq.grad, kk.grad, vv.grad]

    return cuda_ms(step, iters)


def relative_diff(got: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """The largest difference from the reference's output and gradients, each relative to its largest value."""
    return max(((a.float() - b.float()).abs().max() / b.float().abs().max()).item() for a, b in zip(got, reference))


def kernels(heads: int, kv_heads: int, samples: int, length: int):
    """name -> f(q, k, v) on packed [tokens, heads, head_dim] tensors, returning [tokens, heads, head_dim]."""
    tokens = samples * length
    cu = torch.arange(0, tokens + 1, length, device="cuda", dtype=torch.int32)
    out = {}

    def flash2(q, k, v):
        from flash_attn import flash_attn_varlen_func

        return flash_attn_varlen_func(q, k, v, cu, cu, length, length, causal=True)

    out["flash2"] = flash2

    def sdpa(gqa: bool):
        def run(q, k, v):
            if samples != 1:
                raise NotImplementedError("packed sequences need a varlen kernel")
            if not gqa:
                k, v = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (k, v))
            q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
            with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
            return o.squeeze(0).transpose(0, 1)
        return run

    out["cudnn"], out["cudnn-gqa"] = sdpa(False), sdpa(True)

    host_cu = cu.cpu()  # as verl_patches hands it over: once a micro-batch, not once a layer

    def recipe(q, k, v):
        from llm_bridge.job.cudnn_attention import packed_sdpa_forward

        rows = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        return packed_sdpa_forward(SimpleNamespace(training=True), *rows, None, cu_seq_lens_q=host_cu)[0].squeeze(0)

    out["sdpa_cudnn"] = recipe

    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    document = torch.arange(tokens, device="cuda") // length

    def causal_document(b, h, q_idx, kv_idx):
        return (document[q_idx] == document[kv_idx]) & (q_idx >= kv_idx)

    mask = create_block_mask(causal_document, None, None, tokens, tokens, device="cuda")
    compiled = torch.compile(flex_attention)

    def flex(q, k, v):
        q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        return compiled(q, k, v, block_mask=mask, enable_gqa=True).squeeze(0).transpose(0, 1)

    out["flex"] = flex
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(QWEN3_ARCHS), default="qwen3-32b")
    parser.add_argument("--lengths", default="8192,16384,32768")
    parser.add_argument("--samples", default="1,2", help="sequences packed into one micro-batch")
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()
    shape = QWEN3_ARCHS[args.arch]
    heads, kv_heads = shape["num_attention_heads"], shape["num_key_value_heads"]
    head_dim = shape.get("head_dim", 128)
    torch.manual_seed(0)
    for samples in map(int, args.samples.split(",")):
        for length in map(int, args.lengths.split(",")):
            tokens = samples * length
            q = torch.randn(tokens, heads, head_dim, device="cuda", dtype=torch.bfloat16)
            k, v = (torch.randn(tokens, kv_heads, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(2))
            grad = torch.randn_like(q)
            row, reference = {"arch": args.arch, "samples": samples, "length": length}, None
            for name, fn in kernels(heads, kv_heads, samples, length).items():
                try:
                    ms, out = timed(fn, q, k, v, grad, args.iters)
                except Exception as exc:  # noqa: BLE001 - a kernel that cannot run this case says why
                    row[name] = f"cannot: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                    continue
                if reference is None:
                    reference = out
                diff = relative_diff(out, reference)
                row[name] = {"ms": round(ms, 2), "vs_flash2": round(row["flash2"]["ms"] / ms, 2) if "flash2" in row
                             and isinstance(row["flash2"], dict) else None, "max_rel_diff": round(diff, 4)}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
