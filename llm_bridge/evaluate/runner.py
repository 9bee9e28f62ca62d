"""Run one function over many items on a thread pool, appending each result as it finishes."""

import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Callable, Iterable

from llm_bridge.evaluate.client import describe
from llm_bridge.evaluate.store import JsonlStore

def run_items(items: Iterable[dict], work: Callable[[dict], dict], store: JsonlStore, workers: int, what: str,
              done: set[str] | None = None) -> dict:
    """work(item) -> record (with "id" and "status"). Exceptions become status "failed" records.
    Items whose id is in `done` (default: those the store has finished) are skipped."""
    if done is None:
        done = set(store.finished())
    todo = [item for item in items if str(item["id"]) not in done]
    counts = {"skipped": len(done), "ok": 0, "truncated": 0, "no_answer": 0, "failed": 0}
    start = time.time()

    def safe(item: dict) -> dict:
        try:
            return work(item)
        except Exception as error:  # noqa: BLE001 - any failure of one item is recorded, not fatal
            return {"id": str(item["id"]), "status": "failed", "error": describe(error)}

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for n, future in enumerate(as_completed(pool.submit(safe, item) for item in todo), start=1):
            record = future.result()
            store.append(record)
            counts[record["status"]] += 1
            if n % 50 == 0 or n == len(todo):
                print(f"  {what}: {n}/{len(todo)} ({time.time() - start:.0f} s)", file=sys.stderr, flush=True)
    no_answer = f"{counts['no_answer']} without an answer (ended inside the thinking), " if counts["no_answer"] else ""
    print(f"{what}: {counts['ok']} ok, {counts['truncated']} truncated, {no_answer}{counts['failed']} failed, "
          f"{counts['skipped']} already done -> {store.path}")
    return counts
