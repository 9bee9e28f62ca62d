"""Where one profiled training step spends its GPU time, from a torch.profiler chrome trace.

    python benchmarks/trace_summary.py TRACE.json[.gz] [--top 15]

Reports the traced wall time, how much of it the GPU was busy (union of kernel and memcpy intervals),
GPU time by kernel family, the longest kernels, and the CUDA calls in which the CPU waited. A GPU busy
well under the wall time means the step is bound by Python or by synchronisation, not by kernels; the
idle gaps (GPU doing nothing for --gap-ms or longer) say where: each is charged to the innermost CPU op
(any thread) running at its middle, "(none)" when only Python ran, and to the last CUDA call issued before
it began (a synchronize there means the CPU had waited for the GPU to drain).
"""

import argparse
import bisect
import gzip
import json
import re
from collections import Counter
from pathlib import Path

FAMILIES = [  # first match wins
    ("nccl", r"nccl"),
    ("flash-attn", r"flash"),
    ("gemm", r"gemm|cutlass|xmma|nvjet|cublas|wgmma"),
    ("triton", r"triton"),
    ("copy/cast", r"memcpy|memset|copy|cast|to_copy"),
    ("reduce/softmax", r"reduce|softmax|norm"),
    ("elementwise", r"elementwise|vectorized|unrolled"),
]


def family(name: str) -> str:
    lowered = name.lower()
    return next((fam for fam, pattern in FAMILIES if re.search(pattern, lowered)), "other")


def busy_spans(gpu: list[dict]) -> list[tuple[float, float]]:
    """The union of the GPU events' intervals, as disjoint (start, stop) spans in time order."""
    spans: list[list[float]] = []
    for start, stop in sorted((e["ts"], e["ts"] + e["dur"]) for e in gpu):
        if spans and start <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], stop)
        else:
            spans.append([start, stop])
    return [(start, stop) for start, stop in spans]


def _innermost(ops: list[dict], t: float) -> str:
    inside = [e for e in ops if e["ts"] <= t < e["ts"] + e["dur"]]
    return min(inside, key=lambda e: e["dur"])["name"][:80] if inside else "(none)"


def idle_gaps(events: list[dict], busy: list[tuple[float, float]], gap_ms: float, top: int) -> dict:
    """GPU idle intervals of at least gap_ms between the busy spans, charged to the CPU side (module docstring)."""
    gaps = [(end, start) for (_, end), (start, _) in zip(busy, busy[1:]) if start - end >= gap_ms * 1e3]
    ops = [e for e in events if e.get("cat") == "cpu_op"]  # every thread: the backward runs on autograd's own
    marks = [e for e in events if e.get("cat") == "user_annotation"]
    runtime = sorted((e for e in events if e.get("cat") == "cuda_runtime"), key=lambda e: e["ts"])
    starts = [e["ts"] for e in runtime]
    by_op, by_call, listed = Counter(), Counter(), []
    for a, b in gaps:
        ms = (b - a) / 1e3
        op = _innermost(ops, (a + b) / 2)
        i = bisect.bisect_right(starts, a) - 1
        call = runtime[i]["name"] if i >= 0 else "(none)"
        by_op[op] += ms
        by_call[call] += ms
        listed.append((ms, op, call, _innermost(marks, (a + b) / 2)))
    return {
        "gaps": len(gaps), "gap_total_s": round(sum(b - a for a, b in gaps) / 1e6, 3),
        "gap_ms_by_cpu_op": {k: round(v, 1) for k, v in by_op.most_common(top)},
        "gap_ms_by_last_cuda_call": {k: round(v, 1) for k, v in by_call.most_common(8)},
        "longest_gaps": [[round(ms, 1), op, call, mark] for ms, op, call, mark in sorted(listed, reverse=True)[:top]],
    }


def summarize(trace: Path, top: int = 15, gap_ms: float = 0.5) -> dict:
    opener = gzip.open if trace.suffix == ".gz" else open
    with opener(trace, "rt") as handle:
        events = [e for e in json.load(handle).get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]
    gpu = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    span = (max(e["ts"] + e["dur"] for e in events) - min(e["ts"] for e in events)) / 1e6 if events else 0.0
    by_family, by_kernel, calls = Counter(), Counter(), Counter()
    for e in gpu:
        by_family[family(e["name"])] += e["dur"] / 1e6
        by_kernel[e["name"][:100]] += e["dur"] / 1e6
    for e in events:
        if e.get("cat") == "cuda_runtime" and re.search(r"Synchronize|Memcpy(?!Async)", e["name"]):
            calls[e["name"]] += e["dur"] / 1e6
    kernel_total = sum(by_family.values())
    busy = busy_spans(gpu)
    return {
        "trace_s": round(span, 3),
        "gpu_busy_s": round(sum(stop - start for start, stop in busy) / 1e6, 3),
        "kernels": len(gpu),
        "gpu_s_by_family": {k: round(v, 3) for k, v in by_family.most_common()},
        "gemm_share": round(by_family["gemm"] / kernel_total, 3) if kernel_total else 0.0,
        "top_kernels": [[name, round(s, 3)] for name, s in by_kernel.most_common(top)],
        "cpu_waits_s": {k: round(v, 3) for k, v in calls.most_common(5)},
        "idle": idle_gaps(events, busy, gap_ms, top),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trace", type=Path)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--gap-ms", type=float, default=0.5, help="shortest GPU idle interval to report")
    args = parser.parse_args()
    print(json.dumps(summarize(args.trace, args.top, args.gap_ms), indent=1))


if __name__ == "__main__":
    main()
