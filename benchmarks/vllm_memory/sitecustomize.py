"""Where vLLM's GPU worker puts memory outside its own pool (docs/benchmarks.md, "GRPO のスクリプトにも expandable segments").

vLLM sizes its pool (weights + KV cache) with `gpu_memory_utilization`, but during generation its
worker also takes memory through PyTorch's caching allocator, and nvidia-smi shows only the sum. This
file, first on PYTHONPATH with BRIDGE_MEMSNAP_DIR set, makes each vLLM worker record every new
cudaMalloc'd segment of that allocator with its Python stack, and before each sleep (verl puts vLLM
to sleep after every rollout, which returns that memory) append to BRIDGE_MEMSNAP_DIR/memsnap-PID.txt
the reserved memory by pool and the live segments of PyTorch's default pool by the code that made them.

  PYTHONPATH=benchmarks/vllm_memory:$PYTHONPATH BRIDGE_MEMSNAP_DIR=/tmp/memsnap \\
      python benchmarks/grpo_bench.py --recipe templates/team.example.yaml --label memsnap ...

Only segment events are recorded (not every allocation), so generation keeps its speed. The hook is
the recipe's own (llm_bridge.job.verl_patches.patch_when_imported), found in this checkout when the recipe is not installed.
Without BRIDGE_MEMSNAP_DIR this file only runs the sitecustomize it shadows.
"""
import collections
import functools
import os
import sys
import time

WORKER_MODULE = "vllm.v1.worker.gpu_worker"
GIB = 1 << 30


def creation_site(frames, depth=4):
    """The innermost `depth` frames outside torch, innermost first."""
    ours = [f for f in frames if "/torch/" not in f["filename"] and not f["filename"].startswith("<")]
    return " < ".join(f"{f['filename'].split('site-packages/')[-1]}:{f['line']}:{f['name']}"
                      for f in ours[:depth]) or "(no Python frame)"


def summarize(snapshot):
    """(GiB by pool id, bytes by creation site of live default-pool segments) of torch.cuda.memory._snapshot()."""
    pool_of = {s["address"]: tuple(s["segment_pool_id"]) for s in snapshot["segments"]}
    by_pool = collections.Counter()
    for s in snapshot["segments"]:
        by_pool[str(tuple(s["segment_pool_id"]))] += s["total_size"]
    live = {}
    for event in snapshot["device_traces"][0]:
        if event["action"] == "segment_alloc":
            live[event["addr"]] = event
        elif event["action"] == "segment_free":
            live.pop(event["addr"], None)
    by_site = collections.Counter()
    for address, event in live.items():
        if pool_of.get(address) == (0, 0):
            by_site[creation_site(event["frames"])] += event["size"]
    return {pool: round(size / GIB, 2) for pool, size in by_pool.items()}, by_site


def report(directory, tag):
    import torch
    by_pool, by_site = summarize(torch.cuda.memory._snapshot())
    lines = [f"== pid {os.getpid()} {tag} {time.strftime('%T')}",
             f"reserved {torch.cuda.memory_reserved() / GIB:.2f} GiB, "
             f"allocated {torch.cuda.memory_allocated() / GIB:.2f} GiB",
             f"segments by pool (GiB): {by_pool}",
             "live default-pool segments by the code that made them:"]
    lines += [f"  {size / GIB:7.2f} GiB  {site}" for site, size in by_site.most_common(12)]
    with open(os.path.join(directory, f"memsnap-{os.getpid()}.txt"), "a") as fh:
        fh.write("\n".join(lines) + "\n")


def instrument(module, directory):
    """Record segments from the worker's device start; report before each sleep, never failing the run."""
    Worker = module.Worker
    init_device, sleep = Worker.init_device, Worker.sleep
    sleeps = 0

    def recording_init_device(self, *args, **kwargs):
        init_device(self, *args, **kwargs)
        import torch
        torch.cuda.memory._record_memory_history(
            enabled="all", context="all", stacks="python", max_entries=200_000,
            skip_actions=["alloc", "free_requested", "free_completed"])

    def reporting_sleep(self, *args, **kwargs):
        nonlocal sleeps
        sleeps += 1
        try:
            report(directory, f"before sleep {sleeps}")
        except Exception as exc:  # a diagnostic must not stop the rollout
            print(f"vllm_memory: no report: {exc!r}", file=sys.stderr)
        return sleep(self, *args, **kwargs)

    Worker.init_device, Worker.sleep = recording_init_device, reporting_sleep


def _run_shadowed_sitecustomize():
    """Python imports one sitecustomize; run the one this file hides (the image's, if any)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        path = os.path.join(entry or ".", "sitecustomize.py")
        if os.path.abspath(entry or ".") != here and os.path.isfile(path):
            with open(path) as fh:
                exec(compile(fh.read(), path, "exec"), {"__name__": "_shadowed_sitecustomize", "__file__": path})
            return


if os.environ.get("BRIDGE_MEMSNAP_DIR"):
    # This file runs in every process, also in grpo_bench's own, whose sys.path holds only the script's folder.
    REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), *[os.pardir] * 2))
    if REPO not in sys.path:
        sys.path.append(REPO)
    from llm_bridge.job.verl_patches import patch_when_imported  # the recipe's own after-import hook

    os.makedirs(os.environ["BRIDGE_MEMSNAP_DIR"], exist_ok=True)
    patch_when_imported(WORKER_MODULE, functools.partial(instrument, directory=os.environ["BRIDGE_MEMSNAP_DIR"]))
_run_shadowed_sitecustomize()
