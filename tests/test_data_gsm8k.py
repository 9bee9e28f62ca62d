"""gsm8k.py on the original GSM8K release (local-path mode) and on bad rows."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from verl.utils.reward_score import default_compute_score

from conftest import REPO

SCRIPT = REPO / "train" / "scripts" / "data_preprocess" / "gsm8k.py"
GSM8K = REPO.parent / "shared" / "data" / "gsm8k"


def run_gsm8k(local_path, out):
    return subprocess.run([sys.executable, str(SCRIPT), "--local-path", str(local_path),
                           "--rl-dir", str(out / "rl"), "--sft-dir", str(out / "sft")],
                          capture_output=True, text=True)


@pytest.mark.skipif(not (GSM8K / "train.jsonl").is_file(), reason="needs ../shared/data/gsm8k (the original release)")
def test_real_gsm8k_train_split(tmp_path):
    result = run_gsm8k(GSM8K, tmp_path)
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(tmp_path / "rl" / "train.parquet").to_pylist()
    assert len(rows) == 7473
    originals = [json.loads(line) for line in (GSM8K / "train.jsonl").read_text().splitlines()]
    for row, original in zip(rows, originals, strict=True):
        assert row["reward_model"]["ground_truth"] == original["answer"].split("####")[-1].strip().replace(",", "")
        # verl's own reward, dispatched by data_source as main_ppo does, gives every reference answer full marks
        score = default_compute_score(row["data_source"], original["answer"], row["reward_model"]["ground_truth"])
        assert score == 1.0
    sft = pq.read_table(tmp_path / "sft" / "train.parquet").to_pylist()
    assert len(sft) == 7473
    assert [m["role"] for m in sft[0]["messages"]] == ["user", "assistant"]
    assert len(pq.read_table(tmp_path / "rl" / "test.parquet")) == 1319


def test_bad_rows_are_reported_not_dropped_silently(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    good = {"question": "What is 2+3?", "answer": "2+3=<<2+3=5>>5\n#### 5"}
    rows = [good, {"question": "", "answer": "#### 1"}, {"question": "Q?", "answer": "no final line"}, good]
    (src / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (src / "test.jsonl").write_text(json.dumps(good) + "\n")
    result = run_gsm8k(src, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "gsm8k train: 2 rows kept, 2 bad rows left out" in result.stderr
    assert "row 1: empty or missing question" in result.stderr
    rejected = [json.loads(line) for line in (tmp_path / "rl" / "train.rejected.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rejected] == [1, 2]
    assert not (tmp_path / "rl" / "test.rejected.jsonl").exists()
    assert sorted(p.name for p in (tmp_path / "rl").iterdir()) == ["test.parquet", "train.parquet", "train.rejected.jsonl"]
