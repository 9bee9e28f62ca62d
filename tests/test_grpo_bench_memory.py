"""grpo_bench's GPU-memory sampler: the timeline places each sample in the run's steps, and the reported
per-process split is the one at the highest total, not each process's own maximum."""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train" / "scripts" / "bench"))
import grpo_bench  # noqa: E402


def test_peak_split_is_taken_at_the_highest_total(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    memory = grpo_bench.GpuMemory(tmp_path / "gpu_memory.tsv", metrics, interval_s=0.02)
    samples = iter([(100, {1: 90, 2: 10}),   # vLLM at its largest, actor small
                    (150, {1: 60, 2: 90}),   # the highest total: both mid-sized
                    (120, {1: 20, 2: 100})])  # actor at its largest
    last = (0, {})

    def query(what):
        nonlocal last
        if what.startswith("gpu="):
            last = next(samples, last)
            return [[str(last[0])]]
        return [[str(pid), str(mib)] for pid, mib in last[1].items()] + [[str(os.getpid()), "[N/A]"]]

    memory.query = query
    memory.start()
    time.sleep(0.1)
    metrics.write_text('{"step": 1}\n')
    time.sleep(0.1)
    memory.stop.set()
    memory.join()

    assert memory.peak_mib == 150
    assert {key.split()[0]: mib for key, mib in memory.peak_by_process.items()} == {"1": 60, "2": 90}
    rows = [line.split("\t") for line in (tmp_path / "gpu_memory.tsv").read_text().splitlines()]
    assert [row[2] for row in rows[:3]] == ["100", "150", "120"]
    assert rows[0][3] == "1:90 2:10"  # the unreadable "[N/A]" row is left out
    assert {row[1] for row in rows} == {"0", "1"}  # steps finished, read from the metrics file
