"""Offline batch generation with vLLM (LLM.chat: the model's own chat template), resumable.

Requests go to vLLM in chunks; each chunk's answers are appended to the jsonl as soon as it
finishes, so an interrupted run loses at most one chunk and a rerun skips what is written.
"""

import sys
import time
from typing import Callable

from llm_bridge.evaluate.store import JsonlStore

CHUNK = 512


def generate(items: list[dict], to_messages: Callable[[dict], list[dict]], store: JsonlStore, model: str,
             max_tokens: int, temperature: float | None = None, top_p: float | None = None,
             tensor_parallel_size: int = 1, max_model_len: int | None = None,
             truncated_status: str = "truncated") -> dict:
    done = set(store.finished())
    todo = [item for item in items if str(item["id"]) not in done]
    counts = {"skipped": len(done), "ok": 0, "truncated": 0}
    if not todo:
        print(f"all {len(done)} already generated -> {store.path}")
        return counts
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len,
              trust_remote_code=False)
    sampling = SamplingParams(max_tokens=max_tokens,
                              **{k: v for k, v in (("temperature", temperature), ("top_p", top_p)) if v is not None})
    start = time.time()
    for lo in range(0, len(todo), CHUNK):
        chunk = todo[lo:lo + CHUNK]
        outputs = llm.chat([to_messages(item) for item in chunk], sampling, use_tqdm=False)
        for item, output in zip(chunk, outputs):
            first = output.outputs[0]
            status = truncated_status if first.finish_reason == "length" else "ok"
            counts[status] += 1
            store.append({"id": str(item["id"]), "status": status, "response": first.text,
                          "finish_reason": first.finish_reason})
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        print(f"  {lo + len(chunk)}/{len(todo)} ({time.time() - start:.0f} s, {tokens} tokens in the last chunk)",
              file=sys.stderr, flush=True)
    print(f"generated: {counts['ok']} ok, {counts['truncated']} truncated, {counts['skipped']} already done -> {store.path}")
    return counts
