"""train/scripts/data_preprocess/arithmetic.py: the generated task is deterministic, exact, harder when held out,
and reaches verl in GSM8K's formats, graded by the reward GRPO trains on."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "train" / "scripts" / "data_preprocess" / "arithmetic.py"
LINE = re.compile(r"^(\d+) ([-+*]) (\d+) = (\d+)\.$")


def load_script():
    spec = importlib.util.spec_from_file_location("arithmetic_prep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def arithmetic():
    return load_script()


@pytest.mark.parametrize("split, steps", [("train", {1, 2, 3}), ("test", {3})])
def test_every_answer_works_the_story_out_exactly(arithmetic, split, steps):
    seen = set()
    for row in arithmetic.generate(split, 400, seed=0):
        *work, final = row["answer"].split("\n")
        numbers = [int(n) for n in re.findall(r"\d+", row["question"])]
        count = numbers[0]  # the story's first number is the starting count
        for line in work:
            a, op, b, result = LINE.match(line).groups()
            assert int(a) == count and 0 <= int(result) <= arithmetic.CEILING
            count = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
            assert count == int(result), line
        assert final == f"#### {count}"
        seen.add(len(work))
    assert seen == steps  # every held-out problem takes as many steps as the longest training ones


def test_the_same_seed_writes_the_same_problems_and_the_splits_do_not_overlap(arithmetic):
    assert arithmetic.generate("train", 300, seed=0) == arithmetic.generate("train", 300, seed=0)
    assert arithmetic.generate("train", 300, seed=0) != arithmetic.generate("train", 300, seed=1)
    train = {row["question"] for row in arithmetic.generate("train", 3000, seed=0)}
    test = {row["question"] for row in arithmetic.generate("test", 300, seed=0, exclude=train)}
    assert len(train) == 3000 and len(test) == 300 and not train & test


def test_held_out_problems_of_a_step_count_training_also_has_are_never_training_ones(arithmetic):
    """0 steps: 7,800 possible questions, so 3,000 training and 500 held-out ones would share some."""
    train = {row["question"] for row in arithmetic.generate("train", 3000, seed=0, steps=(0,))}
    test = [row["question"] for row in arithmetic.generate("test", 500, seed=0, steps=(0,))]
    assert train & set(test), "the check below could not fail"
    test = [row["question"] for row in arithmetic.generate("test", 500, seed=0, steps=(0,), exclude=train)]
    assert len(set(test)) == 500 and not train & set(test)


def test_the_script_writes_verl_rows_that_gsm8k_reward_grades(tmp_path):
    from verl.utils.reward_score import default_compute_score

    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--train", "50", "--test", "20"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "arithmetic test: 20 rows kept, 0 bad rows left out" in done.stderr
    rl = pd.read_parquet(tmp_path / "rl" / "test.parquet")
    sft = pd.read_parquet(tmp_path / "sft" / "train.parquet")
    assert len(rl) == 20 and len(sft) == 50 and set(rl["data_source"]) == {"openai/gsm8k"}
    raw = [json.loads(line) for line in (tmp_path / "raw" / "test.jsonl").read_text().splitlines()]
    for row, ref in zip(rl.itertuples(), raw):
        truth = row.reward_model["ground_truth"]
        assert row.prompt[0]["content"].startswith(ref["question"])
        # the reward verl picks for this data_source: the reference answer scores 1, another number 0
        assert default_compute_score(row.data_source, ref["answer"], truth) == 1.0
        assert default_compute_score(row.data_source, ref["answer"].replace(f"#### {truth}", f"#### {int(truth) + 1}"),
                                     truth) == 0.0
    first = json.loads((tmp_path / "raw" / "train.jsonl").read_text().splitlines()[0])
    assert sft["messages"][0][1]["role"] == "assistant" and sft["messages"][0][1]["content"] == first["answer"]


def test_step_counts_are_a_choice_and_a_task_too_small_for_the_count_asked_stops(arithmetic, tmp_path):
    """0 steps asks for the starting count back (20 names x 10 things x 39 numbers = 7,800 problems at most)."""
    rows = arithmetic.generate("train", 50, seed=0, steps=(0,))
    assert all(row["answer"] == "#### " + re.findall(r"\d+", row["question"])[0] for row in rows)
    with pytest.raises(SystemExit, match="only 7800 distinct train problems"):
        arithmetic.generate("train", 8000, seed=0, steps=(0,))
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--train-steps", "1,x"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2 and "give step counts of 0 or more" in done.stderr and not (tmp_path / "raw").exists()


def test_the_benchmark_model_reads_numbers_a_digit_at_a_time(arithmetic):
    """learn_bench's tokenizer, trained on the problems, splits numbers into digits as Qwen's tokenizers do: with
    whole numbers as tokens (297 of them in the default vocabulary) a model has to learn every sum by heart, and an
    H200 SFT run wrote answers of the right form with wrong sums (1.6% held-out)."""
    sys.path.insert(0, str(REPO / "tests" / "cpu"))
    import build_tiny

    corpus = [r["question"] + "\n" + r["answer"] for r in arithmetic.generate("train", 2000, 0)]
    tokenizer = build_tiny.build_tokenizer(corpus, split_digits=True)
    line = "24 + 137 = 161.\n#### 161"
    tokens = tokenizer.tokenize(line)
    assert [t for t in tokens if any(c.isdigit() for c in t)] == list("24" "137" "161" "161")
    assert tokenizer.decode(tokenizer(line)["input_ids"]) == line
    whole = build_tiny.build_tokenizer(corpus)
    assert any(len(t.strip("Ġ")) > 1 and t.strip("Ġ").isdigit() for t in whole.tokenize(line))
