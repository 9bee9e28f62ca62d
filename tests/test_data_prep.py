"""hle.py + its reward, light_r1_sft.py and the generic converter, in local-path (offline) mode."""

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import OmegaConf
from verl.trainer.ppo.reward import get_custom_reward_fn

from conftest import REPO
from llm_bridge.rewards.hle import SYSTEM_PROMPT

SCRIPTS = REPO / "train" / "scripts" / "data_preprocess"
HLE_REWARD = REPO / "llm_bridge" / "rewards" / "hle.py"


def run(script, *args):
    result = subprocess.run([sys.executable, str(SCRIPTS / script), *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result


def read(path):
    return pq.read_table(path).to_pylist()


def hle_rows():
    return [
        {"id": "q1", "question": "What is 6 x 7?", "image": "", "answer": "42", "answer_type": "exactMatch", "category": "Math"},
        {"id": "q2", "question": "Which is a noble gas?\nA. N\nB. Ar", "image": "", "answer": "B",
         "answer_type": "multipleChoice", "category": "Chemistry"},
        {"id": "q3", "question": "What is in the picture?", "image": "data:image/png;base64,xx", "answer": "cat",
         "answer_type": "exactMatch", "category": "Other"},
        {"id": "q4", "question": "No answer here", "image": "", "answer": "", "answer_type": "exactMatch", "category": "Math"},
    ]


def test_hle_text_only_in_verl_format(tmp_path):
    pq.write_table(pa.Table.from_pylist(hle_rows()), tmp_path / "test.parquet")
    result = run("hle.py", "--local-path", tmp_path, "--out", tmp_path / "out")
    assert "4 questions, 1 with an image left out, 3 text-only" in result.stdout
    assert "hle test: 2 rows kept, 1 bad rows left out" in result.stderr
    rows = read(tmp_path / "out" / "test.parquet")
    assert [r["extra_info"]["id"] for r in rows] == ["q1", "q2"]
    assert rows[0]["data_source"] == "cais/hle" and rows[0]["reward_model"]["ground_truth"] == "42"
    # one system prompt for every question, as the official code since "Unify system prompt"
    assert rows[0]["prompt"][0]["content"] == rows[1]["prompt"][0]["content"] == SYSTEM_PROMPT
    assert "Answer: {your chosen answer}" in SYSTEM_PROMPT and "Exact Answer" not in SYSTEM_PROMPT
    [rejected] = [json.loads(line) for line in (tmp_path / "out" / "test.rejected.jsonl").read_text().splitlines()]
    assert rejected["row"]["id"] == "q4"


def test_hle_reward_loaded_the_way_verl_loads_it():
    config = OmegaConf.create({"reward": {"custom_reward_function": {"path": str(HLE_REWARD), "name": "compute_score"}}})
    score = get_custom_reward_fn(config)
    exact = {"answer_type": "exactMatch"}
    assert score("cais/hle", "Explanation: 6*7.\nExact Answer: 42\nConfidence: 90%", "42", exact) == 1.0
    assert score("cais/hle", "Explanation: guess.\nExact Answer: 41\nConfidence: 10%", "42", exact) == 0.0
    assert score("cais/hle", "<think>Answer: A</think>Explanation: argon.\nAnswer: (B)\nConfidence: 80%", "B",
                 {"answer_type": "multipleChoice"}) == 1.0
    assert score("cais/hle", "Explanation: x\nExact Answer: The Eiffel Tower.\n", "eiffel tower", exact) == 1.0
    assert score("cais/hle", "no answer line at all", "42", exact) == 0.0
    assert score("cais/hle", "<think>so Answer: 42 it is", "42", exact) == 0.0  # inside unclosed thinking
    # a template that opens <think> in the prompt (DeepSeek-R1): an unfinished response has no tags at all
    assert score("cais/hle", "I guess...\nAnswer: 42", "42", exact) == 1.0
    assert score("cais/hle", "I guess...\nAnswer: 42", "42", exact, thinking_opened_in_prompt=True) == 0.0
    # the R1 switch, passed the way a team passes it: +reward.custom_reward_function.reward_kwargs....=true
    config.reward.custom_reward_function.reward_kwargs = {"thinking_opened_in_prompt": True}
    r1 = get_custom_reward_fn(config)
    assert r1("cais/hle", "so...\nAnswer: 42", "42", exact) == 0.0
    assert r1("cais/hle", "so...</think>\nAnswer: 42", "42", exact) == 1.0
    # other data sources fall through to verl's built-in scorers
    assert score("openai/gsm8k", "so the answer is\n#### 42", "42", {}) == 1.0


def test_light_r1_conversations_and_deterministic_split(tmp_path):
    turn = lambda who, text: {"from": who, "value": text}  # noqa: E731
    rows = [{"conversations": [turn("user", f"Problem {i}?"), turn("assistant", f"<think>...</think> \\boxed{{{i}}}")]}
            for i in range(40)]
    rows.append({"conversations": [turn("user", "unanswered")]})
    (tmp_path / "stage2.json").write_text(json.dumps(rows))
    for out in ("a", "b"):
        result = run("light_r1_sft.py", "--local-path", tmp_path / "stage2.json", "--out", tmp_path / out, "--test-fraction", 0.1)
    assert "40 rows kept, 1 bad rows left out" in result.stderr
    assert "row 40: the last turn is not the assistant's" in result.stderr
    train_a, train_b = read(tmp_path / "a" / "train.parquet"), read(tmp_path / "b" / "train.parquet")
    assert len(train_a) == 36 and len(read(tmp_path / "a" / "test.parquet")) == 4
    assert train_a == train_b
    assert train_a[0]["messages"][1]["role"] == "assistant"


def test_convert_fields_to_sft_and_rl(tmp_path):
    rows = [{"q": f"What is {i}+1?", "a": str(i + 1)} for i in range(20)] + [{"q": "", "a": "0"}]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run("convert.py", "--to", "sft", "--local-path", tmp_path / "qa.jsonl", "--prompt-field", "q", "--response-field", "a",
        "--system", "Be brief.", "--out", tmp_path / "sft", "--test-fraction", 0)
    sft = read(tmp_path / "sft" / "train.parquet")
    assert len(sft) == 20 and [m["role"] for m in sft[0]["messages"]] == ["system", "user", "assistant"]
    assert not (tmp_path / "sft" / "test.parquet").exists()
    run("convert.py", "--to", "rl", "--local-path", tmp_path / "qa.jsonl", "--prompt-field", "q", "--answer-field", "a",
        "--data-source", "openai/gsm8k", "--instruction", "Answer after ####.", "--out", tmp_path / "rl")
    rl = read(tmp_path / "rl" / "train.parquet") + read(tmp_path / "rl" / "test.parquet")
    assert len(rl) == 20 and rl[0]["prompt"][0]["content"].endswith("Answer after ####.")
    assert [json.loads(line)["index"] for line in (tmp_path / "rl" / "rejected.jsonl").read_text().splitlines()] == [20]


def test_convert_names_missing_arguments(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPTS / "convert.py"), "--to", "rl", "--local-path", "x.jsonl",
                             "--out", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and "--to rl needs --prompt-field, --answer-field and --data-source" in result.stderr


def test_prepared_data_follows_the_umask_not_mkstemps_0600(tmp_path):
    """Parquet is written through a temp file and a rename; on a team share (umask 002) teammates must read it."""
    source = tmp_path / "qa.jsonl"
    source.write_text("".join(json.dumps({"q": f"question {i}", "a": f"answer {i}"}) + "\n" for i in range(20)))
    out = tmp_path / "qa_sft"
    result = subprocess.run(["bash", "-c", 'umask 002 && exec "$@"', "-", sys.executable, str(SCRIPTS / "convert.py"),
                             "--to", "sft", "--local-path", str(source), "--prompt-field", "q", "--response-field", "a",
                             "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert {p.name: p.stat().st_mode & 0o777 for p in out.glob("*.parquet")} == {"train.parquet": 0o664,
                                                                                   "test.parquet": 0o664}


def test_a_data_prep_script_without_its_packages_says_which_environment_runs_it(tmp_path):
    """Data prep run from the login node's light venv: the package and the environment, not an import traceback."""
    (tmp_path / "train.jsonl").write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    (tmp_path / "test.jsonl").write_text('{"question": "2+2?", "answer": "#### 4"}\n')
    script = REPO / "train" / "scripts" / "data_preprocess" / "gsm8k.py"
    code = ("import runpy, sys; sys.modules['pyarrow'] = None; sys.modules['datasets'] = None; "
            f"sys.argv = [{str(script)!r}, '--local-path', {str(tmp_path)!r}, '--rl-dir', {str(tmp_path / 'rl')!r}, "
            f"'--sft-dir', {str(tmp_path / 'sft')!r}]; runpy.run_path(sys.argv[0], run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "needs the Python package pyarrow" in result.stderr and "conda activate" in result.stderr
