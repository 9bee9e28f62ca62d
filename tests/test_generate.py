"""`llm-bridge generate` end to end on the tiny model: the CLI, the chat template, the chunks and the resumable
jsonl are the recipe's; vLLM's offline engine is tests/cpu/vllm_offline's transformers stand-in."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "cpu"))
import pipeline  # noqa: E402


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    work = tmp_path_factory.mktemp("generate")
    stage = pipeline.Stage(work)
    pipeline.prepare(work, stage)
    return work, stage


def test_generate_answers_every_prompt_once_and_resumes(prepared):
    work, stage = prepared
    model, data, out = work / "tiny" / "model", work / "data" / "gsm8k" / "test.parquet", work / "answers.jsonl"
    stage.run("generate", pipeline.generate_command(model, data, out, "--max-tokens", "6"), pipeline.VLLM_CPU_ENV)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(int(r["id"]) for r in records) == list(range(16))  # extra_info.index of the 16 test rows
    # a random model: its 6 greedy tokens rarely end in the end token
    assert all(r["status"] in ("ok", "truncated") and isinstance(r["response"], str) for r in records), records[0]
    assert any(r["finish_reason"] == "length" for r in records)

    stage.run("generate-again", pipeline.generate_command(model, data, out, "--max-tokens", "6"), pipeline.VLLM_CPU_ENV)
    assert "all 16 already generated" in (work / "logs" / "generate-again.log").read_text()
    assert [json.loads(line) for line in out.read_text().splitlines()] == records

    fresh = work / "answers-2.jsonl"  # greedy: the same answers again, in a new file
    stage.run("generate-fresh", pipeline.generate_command(model, data, fresh, "--max-tokens", "6", "--limit", "4",
                                                          "--gpu-memory-utilization", "0.3"), pipeline.VLLM_CPU_ENV)
    assert "'gpu_memory_utilization': 0.3" in (work / "logs" / "generate-fresh.log").read_text()
    again = {r["id"]: r["response"] for r in map(json.loads, fresh.read_text().splitlines())}
    assert len(again) == 4 and all(again[i] == next(r["response"] for r in records if r["id"] == i) for i in again)


@pytest.mark.parametrize("share", ["0", "1.5", "most"])
def test_a_share_of_the_gpu_outside_0_to_1_is_refused_before_loading(tmp_path, share):
    import subprocess

    argv = pipeline.generate_command(tmp_path / "model", tmp_path / "data.parquet", tmp_path / "out.jsonl",
                                     "--gpu-memory-utilization", share)
    result = subprocess.run(argv, cwd=pipeline.REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--gpu-memory-utilization" in result.stderr and "e.g. 0.3" in result.stderr, result.stderr
    assert not (tmp_path / "out.jsonl").exists()
