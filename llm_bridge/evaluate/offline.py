"""Offline batch generation with vLLM (LLM.chat: the model's own chat template), resumable.

Requests go to vLLM in chunks; each chunk's answers are appended to the jsonl as soon as it
finishes, so an interrupted run loses at most one chunk and a rerun skips what is written.
Each record keeps the answer (`response`) apart from the thinking (`reasoning`), as the server path does.
"""

import sys
import time
from typing import Callable

from llm_bridge.evaluate import thinking
from llm_bridge.evaluate.sampling import Sampling
from llm_bridge.evaluate.store import JsonlStore

CHUNK = 512


def generate(items: list[dict], to_messages: Callable[[dict], list[dict]], store: JsonlStore, model: str,
             sampling: Sampling, *, tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1,
             max_model_len: int | None = None, gpu_memory_utilization: float | None = None) -> dict:
    """pipeline_parallel_size > 1: a model larger than one node, split into that many stages of
    tensor_parallel_size GPUs each, on the Ray cluster this job started (vLLM's Ray executor joins RAY_ADDRESS)."""
    done = set(store.finished())
    todo = [item for item in items if str(item["id"]) not in done]
    counts = {"skipped": len(done), "ok": 0, "truncated": 0, "unclosed thinking": 0}
    if not todo:
        print(f"all {len(done)} already generated -> {store.path}")
        return counts
    from vllm import LLM

    extra = {"distributed_executor_backend": "ray"} if pipeline_parallel_size > 1 else {}
    if gpu_memory_utilization is not None:  # else vLLM's own default (0.9 of the GPU)
        extra["gpu_memory_utilization"] = gpu_memory_utilization
    llm = LLM(model=model, tensor_parallel_size=tensor_parallel_size, pipeline_parallel_size=pipeline_parallel_size,
              max_model_len=max_model_len, trust_remote_code=False, **extra)
    params = sampling.vllm_params(llm)
    tokenizer = llm.get_tokenizer()
    print(f"sampling: {params}", file=sys.stderr)
    start = time.time()
    for lo in range(0, len(todo), CHUNK):
        chunk = todo[lo:lo + CHUNK]
        outputs = llm.chat([to_messages(item) for item in chunk], params, use_tqdm=False)
        for item, output in zip(chunk, outputs):
            first = output.outputs[0]
            # The chat template may open the thinking block in the prompt (DeepSeek-R1): read the prompt's end.
            opened = thinking.prompt_opens_thinking(tokenizer.decode(list(output.prompt_token_ids[-16:])))
            fields = thinking.record(first.text, None, first.finish_reason, opened)
            counts[fields["status"]] += 1
            counts["unclosed thinking"] += fields.get("thinking") == "unclosed"
            store.append({"id": str(item["id"]), **fields})
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        print(f"  {lo + len(chunk)}/{len(todo)} ({time.time() - start:.0f} s, {tokens} tokens in the last chunk)",
              file=sys.stderr, flush=True)
    print(f"generated: {counts['ok']} ok, {counts['truncated']} truncated ({counts['unclosed thinking']} inside the "
          f"thinking: no answer), {counts['skipped']} already done -> {store.path}")
    return counts
