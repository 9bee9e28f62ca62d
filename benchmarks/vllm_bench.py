"""vLLM generation the way verl's rollout server asks for it, without verl: where does GRPO's `gen` go?

    python benchmarks/vllm_bench.py --model DIR --data grpo.parquet --label NAME \
        [--stream-interval 1] [--modes streamed,final-only]

verl 0.9.1's rollout server (vllm_async_server.py) sends every response as its own AsyncLLM request with
vLLM's default output kind, CUMULATIVE: each decode step builds a new RequestOutput for every running
request and wakes the coroutine waiting on it, in one Python process. This runs the same engine settings
(verl's rollout defaults) on the same prompts and compares, in one engine:
  streamed              what verl does: CUMULATIVE outputs, logprobs=0
  final-only            one output per request when it finishes (RequestOutputKind.FINAL_ONLY), logprobs=0
  final-only-nologprobs final-only without the sampled tokens' log-probs (verl: rollout.calculate_log_probs=False)
  final-only-nodetok    final-only without detokenizing (verl reads token ids only)
--sleep-level L puts the engine to sleep and wakes it after every round, as verl does between rollouts
(level 1 keeps the weights on the CPU; verl's level 2 drops them and syncs the actor's, which this cannot).
--stream-interval is vLLM's engine option (scheduler_config.stream_interval) that sends a streamed
output only every N tokens; verl passes it through actor_rollout_ref.rollout.engine_kwargs.vllm.
Every response runs to --max-tokens (ignore_eos), so each mode generates the same number of tokens.
Prints one JSON object per mode and appends them to <work>/results.jsonl.
"""

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path


def prompt_ids(data: Path, tokenizer, count: int) -> list[list[int]]:
    import pyarrow.parquet as pq

    rows = pq.read_table(data, columns=["prompt"]).to_pylist()[:count]
    return [tokenizer.apply_chat_template(list(r["prompt"]), add_generation_prompt=True, tokenize=True,
                                          return_dict=False) for r in rows]


def mode_params(mode: str) -> dict:
    from vllm.sampling_params import RequestOutputKind

    if mode == "streamed":
        return {"output_kind": RequestOutputKind.CUMULATIVE}
    final = {"output_kind": RequestOutputKind.FINAL_ONLY}
    return {"final-only": final, "final-only-nologprobs": {**final, "logprobs": None},
            "final-only-nodetok": {**final, "detokenize": False}}[mode]


async def one_round(engine, prompts: list[list[int]], n: int, max_tokens: int, mode: dict) -> dict:
    from vllm import SamplingParams, TokensPrompt

    async def one(ids):
        params = SamplingParams(**{"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0,
                                   "logprobs": 0, "max_tokens": max_tokens, "ignore_eos": True, **mode})
        final = None
        async for out in engine.generate(TokensPrompt(prompt_token_ids=ids), params, uuid.uuid4().hex):
            final = out
        return len(final.outputs[0].token_ids)

    start = time.perf_counter()
    lengths = await asyncio.gather(*(one(ids) for ids in prompts for _ in range(n)))
    seconds = time.perf_counter() - start
    return {"responses": len(lengths), "tokens": sum(lengths), "seconds": round(seconds, 2),
            "tokens_per_s": round(sum(lengths) / seconds)}


async def main_async(args) -> None:
    from transformers import AutoTokenizer
    from vllm import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    prompts = prompt_ids(args.data, AutoTokenizer.from_pretrained(args.model), args.prompts)
    # verl 0.9.1's rollout.yaml defaults and what its server sets (sleep mode, cudagraph_mode), with the
    # recipe's gpu_memory_utilization
    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(
        model=str(args.model), dtype="bfloat16", gpu_memory_utilization=0.6, max_num_seqs=256,
        max_num_batched_tokens=8192, enable_chunked_prefill=True, enable_prefix_caching=True,
        enable_sleep_mode=True, logprobs_mode="processed_logprobs", disable_log_stats=True,
        compilation_config={"cudagraph_mode": "FULL_AND_PIECEWISE"}, stream_interval=args.stream_interval))
    await one_round(engine, prompts[:8], 1, 32, mode_params("streamed"))  # warm-up
    with (args.work / "results.jsonl").open("a") as results:
        for _ in range(args.repeats):
            for mode in args.modes.split(","):
                row = {"bench": "vllm", "label": args.label, "mode": mode, "stream_interval": args.stream_interval,
                       "sleep_level": args.sleep_level,
                       "prompts": len(prompts), "n": args.n, "max_tokens": args.max_tokens,
                       **await one_round(engine, prompts, args.n, args.max_tokens, mode_params(mode))}
                results.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
                if args.sleep_level:
                    await engine.sleep(level=args.sleep_level)
                    await engine.wake_up()
                    await engine.reset_prefix_cache()
    engine.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="verl RL parquet with a `prompt` column")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--stream-interval", type=int, default=1)
    p.add_argument("--modes", default="streamed,final-only",
                   help="comma-separated: streamed, final-only, final-only-nologprobs, final-only-nodetok")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--sleep-level", type=int, default=0, choices=(0, 1),
                   help="sleep and wake the engine after every round (0: never)")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
