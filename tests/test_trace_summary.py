"""The profile summary that docs/benchmarks.md quotes: where the GPU sat idle, and what the CPU was doing."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from trace_summary import summarize  # noqa: E402


def event(cat, name, ts, dur, tid=1):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "tid": tid}


def test_idle_gaps_are_charged_to_the_cpu_op_and_the_sync_before_them(tmp_path):
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({"traceEvents": [
        event("user_annotation", "micro_batch0", 0, 20_000),
        event("cpu_op", "aten::item", 1_000, 4_000),
        event("cpu_op", "aten::_local_scalar_dense", 1_010, 3_900),
        event("cuda_runtime", "cudaStreamSynchronize", 1_020, 900),
        event("cuda_runtime", "cudaLaunchKernel", 4_950, 10),  # issued inside the gap: not what the gap waited on
        event("cpu_op", "aten::mm", 5_380, 50),
        event("cuda_runtime", "cudaLaunchKernel", 5_390, 10),
        event("kernel", "nvjet_gemm", 0, 1_900, tid=7),    # GPU busy, then idle 1.9-5.0 ms while the CPU waits
        event("kernel", "elementwise", 5_000, 100, tid=7),  # idle 5.1-5.4 ms: 0.3 ms, under the 0.5 ms floor
        event("kernel", "nvjet_gemm", 5_400, 600, tid=7),   # then idle 6.0-9.0 ms while autograd's thread works
        event("cpu_op", "autograd::engine::evaluate_function: MmBackward0", 7_000, 1_000, tid=2),  # autograd's thread
        event("kernel", "nvjet_gemm", 9_000, 1_000, tid=7),  # then idle 10.0-11.0 ms: nothing on any thread
        event("kernel", "nvjet_gemm", 11_000, 500, tid=7),
    ]}))

    idle = summarize(trace)["idle"]

    assert idle["gaps"] == 3
    assert idle["gap_total_s"] == 0.007
    assert idle["gap_ms_by_cpu_op"] == {"aten::_local_scalar_dense": 3.1,
                                        "autograd::engine::evaluate_function: MmBackward0": 3.0, "(none)": 1.0}
    assert idle["gap_ms_by_last_cuda_call"] == {"cudaStreamSynchronize": 3.1, "cudaLaunchKernel": 4.0}
    assert idle["longest_gaps"][0] == [3.1, "aten::_local_scalar_dense", "cudaStreamSynchronize", "micro_batch0"]
