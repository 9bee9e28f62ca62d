"""The plain LoRA loop a team could write in an afternoon (transformers + PEFT), as a baseline for the recipe.

    python benchmarks/peft_bench.py --arch qwen3-32b --gsm8k DIR --work DIR --label peft --tokens 8192 \
        [--targets all-linear | q_proj,k_proj,v_proj,o_proj]

One process, one GPU: the model's shape with random weights built on the GPU in bf16, sdpa attention,
non-reentrant gradient checkpointing, LoRA rank 32 alpha 64 (PEFT's own defaults otherwise), AdamW, one
packed sequence of --tokens GSM8K tokens per step (the tokenizer of sft_bench.py). No padding, no fused
kernels, no FSDP. Throughput is tokens over wall time after --warmup steps; peak memory is torch's.
Prints one JSON object and one Markdown row; appends both to <work>/results.jsonl.
"""

import time

from common import QWEN3_ARCHS, QWEN_VOCAB, build_tokenizer, finish, load_gsm8k, qwen3_config
from common import parser as bench_parser


def token_stream(gsm8k, work, tokens: int, steps: int):
    """steps sequences of exactly `tokens` ids: GSM8K chat turns, concatenated and cut."""
    from transformers import AutoTokenizer

    pairs = load_gsm8k(gsm8k)
    tokenizer = AutoTokenizer.from_pretrained(build_tokenizer(pairs, work / "tokenizer"))
    ids: list[int] = []
    for p in pairs:
        ids += tokenizer(f"<|im_start|>user\n{p['question']}<|im_end|>\n<|im_start|>assistant\n{p['answer']}<|im_end|>\n",
                         add_special_tokens=False)["input_ids"]
        if len(ids) >= tokens * steps:
            break
    return [ids[i * tokens:(i + 1) * tokens] for i in range(steps)]


def arguments():
    parser = bench_parser(__doc__, "SFT script", default_steps=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--targets", default="all-linear", help="PEFT target_modules: all-linear or a comma list")
    return parser


def main() -> None:
    args = arguments().parse_args()
    if args.arch not in QWEN3_ARCHS:
        raise SystemExit(f"--arch {args.arch}: the PEFT baseline builds Qwen3 shapes only ({', '.join(QWEN3_ARCHS)})")
    args.work.mkdir(parents=True, exist_ok=True)

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    batches = token_stream(args.gsm8k, args.work, args.tokens, args.steps)
    config = qwen3_config(QWEN3_ARCHS[args.arch], QWEN_VOCAB)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    targets = args.targets if args.targets == "all-linear" else args.targets.split(",")
    model = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, target_modules=targets, task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    times, losses = [], []
    for ids in batches:
        x = torch.tensor([ids], device="cuda")
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter())
        losses.append(round(loss.item(), 4))
    seconds = times[-1] - times[args.warmup - 1]
    timed = len(times) - args.warmup
    result = {"arch": args.arch, "label": args.label, "gpus": 1, "targets": args.targets, "trainable": trainable,
              "tokens_per_step": args.tokens, "tokens_per_s": round(args.tokens * timed / seconds),
              "step_s": round(seconds / timed, 3), "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1),
              "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 2**30, 1), "loss": losses,
              "gpu": torch.cuda.get_device_name()}
    finish(args, result, [args.arch, args.label, 1, result["tokens_per_s"], "-", result["step_s"], result["peak_mem_gb"]])


if __name__ == "__main__":
    main()
