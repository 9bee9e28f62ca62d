"""grpo_bench's GPU-memory sampler: each sample is placed in the run's steps, and the reported per-process
split is the one at the highest total, not each process's own maximum."""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import grpo_bench  # noqa: E402


def fake_nvidia_smi(samples):
    """query() answering from samples [(total MiB, {pid: MiB})], one per memory.used read."""
    samples, last = iter(samples), (0, {})

    def query(what):
        nonlocal last
        if what.startswith("gpu="):
            last = next(samples, last)
            return [[str(last[0])]]
        return [[str(pid), str(mib)] for pid, mib in last[1].items()] + [[str(os.getpid()), "[N/A]"]]
    return query


def test_peak_split_is_taken_at_the_highest_total(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    memory = grpo_bench.GpuMemory(tmp_path / "gpu_memory.tsv", metrics)
    memory.query = fake_nvidia_smi([(100, {1: 90, 2: 10}),    # vLLM at its largest, actor small
                                    (150, {1: 60, 2: 90}),    # the highest total: both mid-sized
                                    (120, {1: 20, 2: 100})])  # actor at its largest
    rows = [memory.sample(0.5).split("\t"), memory.sample(1.0).split("\t")]
    metrics.write_text('{"step": 1}\n')
    rows.append(memory.sample(1.5).split("\t"))

    assert memory.peak_mib == 150
    assert {key.split()[0]: mib for key, mib in memory.peak_by_process.items()} == {"1": 60, "2": 90}
    assert [row[2] for row in rows] == ["100", "150", "120"]
    assert [row[1] for row in rows] == ["0", "0", "1"]  # steps finished, read from the metrics file
    assert rows[0][3] == "1:90 2:10"  # the unreadable "[N/A]" row is left out


def test_the_thread_writes_the_timeline(tmp_path):
    memory = grpo_bench.GpuMemory(tmp_path / "gpu_memory.tsv", tmp_path / "metrics.jsonl", interval_s=0.01)
    memory.query = fake_nvidia_smi([(100, {1: 100})])
    memory.start()
    timeline, deadline = tmp_path / "gpu_memory.tsv", time.monotonic() + 30
    while time.monotonic() < deadline and not (timeline.is_file() and timeline.read_text()):
        time.sleep(0.01)
    memory.stop.set()
    memory.join()
    assert timeline.read_text().splitlines()[0].split("\t")[1:] == ["0", "100", "1:100"]
