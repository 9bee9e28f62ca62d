"""One MoE block's forward and backward: transformers' grouped_mm experts against the recipe's (llm_bridge.job.moe_experts).

    python benchmarks/moe_experts_bench.py [--arch qwen3-30b-a3b] [--tokens 8192] [--iters 20]

A Qwen3-MoE sparse block with the named shape (random bf16 weights, frozen, as under LoRA), its input
requiring a gradient as it does under checkpointing. Prints each implementation's milliseconds per
forward+backward (CUDA events, after warm-up), the GPU kernels each launches, and the largest output
difference between them relative to the output's scale. GPU only.
"""

import argparse
import json

import torch
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

from common import QWEN3_ARCHS, cuda_ms, qwen3_config
from llm_bridge.job import moe_experts


def timed(block, hidden, grad, iters: int) -> tuple[float, int, torch.Tensor]:
    def step():
        x = hidden.detach().requires_grad_()
        out = block(x)
        out = out[0] if isinstance(out, tuple) else out
        out.backward(grad)
        return out

    ms, out = cuda_ms(step, iters)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    kernels = sum(e.count for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA)
    return ms, kernels, out.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=[a for a, s in QWEN3_ARCHS.items() if s.get("moe")], default="qwen3-30b-a3b")
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = qwen3_config(QWEN3_ARCHS[args.arch], vocab_size=1024)
    block = Qwen3MoeSparseMoeBlock(config).to("cuda", torch.bfloat16)
    for parameter in block.parameters():
        torch.nn.init.normal_(parameter, std=0.02)
        parameter.requires_grad_(False)
    hidden = torch.randn(1, args.tokens, config.hidden_size, device="cuda", dtype=torch.bfloat16)  # one packed row
    grad = torch.randn_like(hidden)

    config._experts_implementation = "grouped_mm"
    transformers_ms, transformers_kernels, reference = timed(block, hidden, grad, args.iters)
    moe_experts.install()
    recipe_ms, recipe_kernels, out = timed(block, hidden, grad, args.iters)
    result = {"arch": args.arch, "tokens": args.tokens, "gpu": torch.cuda.get_device_name(),
              "transformers_ms": round(transformers_ms, 2), "recipe_ms": round(recipe_ms, 2),
              "speedup": round(transformers_ms / recipe_ms, 2),
              "kernels": {"transformers": transformers_kernels, "recipe": recipe_kernels},
              "max_rel_diff": float((out.float() - reference.float()).abs().max() / reference.float().abs().max())}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
