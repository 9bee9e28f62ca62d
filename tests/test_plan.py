"""llm-bridge plan: the data's rows and tokens counted with the model's own tokenizer, the steps verl takes from them,
each stage's wall time and GPU-hours from the recipe's measured speed (the benchmark rows it is built on agree within
25%), a team's own run replacing the estimate, a stage longer than the time limit split into jobs, and submit
printing the plan. The plan's run-time counterpart (a real SFT's step times read back) is in test_slurm_chain.py."""

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from tokenizers import Tokenizer, models, pre_tokenizers

from llm_bridge.login import time_plan
from llm_bridge.login.config import RL, SFT, LoRA
from llm_bridge.login.loader import load
from llm_bridge.login.model_shape import KNOWN_CONFIGS, find_shape

from conftest import REPO, bridge

BENCHMARKS = (REPO / "docs" / "benchmarks.md").read_text()
WORDS = ["hello", "world", "think", "answer"]


@pytest.fixture
def model_dir(tmp_path):
    """A model directory as the login node sees one: Qwen2.5-0.5B's config.json and a word-level tokenizer.json."""
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(KNOWN_CONFIGS["Qwen/Qwen2.5-0.5B-Instruct"]))
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *WORDS])}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(out / "tokenizer.json"))
    return out


def conversations(path, lengths: list[int]):
    """SFT rows: a user turn of 3 words and an assistant turn of n words."""
    rows = [{"messages": [{"role": "user", "content": "hello world think"},
                          {"role": "assistant", "content": " ".join(["answer"] * n)}]} for n in lengths]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def prompts(path, n: int, words: int = 10):
    pq.write_table(pa.Table.from_pylist([{"prompt": [{"role": "user", "content": " ".join(["hello"] * words)}]}] * n),
                   path)
    return path


@pytest.fixture
def team(example, write_team, tmp_path, model_dir):
    example["sft"].update(model=str(model_dir), train_files=str(conversations(tmp_path / "sft.parquet", [2000] * 1000)))
    example["rl"].update(model=str(model_dir), train_files=str(prompts(tmp_path / "rl.parquet", 960)))
    example["paths"].update(logs=str(tmp_path / "logs"), models=str(tmp_path / "models"))
    (tmp_path / "logs").mkdir()
    return example


def bill_of(write_team, team: dict, stages=("sft", "grpo", "eval", "upload")) -> time_plan.Bill:
    config, problems = load(write_team(team))
    assert config is not None, problems
    return time_plan.plan(config, list(stages))


def line(bill: time_plan.Bill, stage: str) -> time_plan.Line:
    return next(item for item in bill.lines if item.stage == stage)


def test_tokens_are_counted_with_the_models_tokenizer_and_cut_at_max_length(tmp_path, model_dir):
    path = conversations(tmp_path / "c.parquet", [10, 20, 30, 40])
    tokens = time_plan.count_tokens(str(path), "messages", str(model_dir), str(tmp_path), None)
    # 3 + n words, and the template's 5 tokens around each of the 2 messages
    assert tokens.rows == 4 and tokens.mean == pytest.approx(3 + 25 + 10)
    assert tokens.how == f"{model_dir}'s tokenizer"  # every row read, none sampled
    cut = time_plan.count_tokens(str(path), "messages", str(model_dir), str(tmp_path), 30)
    assert cut.mean == pytest.approx((23 + 30 + 30 + 30) / 4)


def test_a_large_file_is_counted_on_a_sample_of_rows(tmp_path, model_dir):
    lengths = [(i % 10) * 50 for i in range(10_000)]
    tokens = time_plan.count_tokens(str(conversations(tmp_path / "c.parquet", lengths)), "messages", str(model_dir),
                                    str(tmp_path), None)
    assert tokens.rows == 10_000 and "2,000 of 10,000 rows" in tokens.how
    assert tokens.mean == pytest.approx(13 + sum(lengths) / len(lengths), rel=0.02)


def test_without_a_tokenizer_the_count_says_how_rough_it_is(tmp_path):
    path = conversations(tmp_path / "c.parquet", [100])
    tokens = time_plan.count_tokens(str(path), "messages", "Qwen/Qwen3-32B", str(tmp_path), None)
    assert "4 characters a token (no tokenizer.json for Qwen/Qwen3-32B here" in tokens.how


def test_steps_follow_verls_loaders_and_the_bill_adds_up(write_team, team):
    bill = bill_of(write_team, team)
    sft, grpo = line(bill, "sft"), line(bill, "grpo")
    # 1,000 rows on 24 GPUs: 41 a rank, 8 a rank a step (192 / 24), 5 steps an epoch, 2 epochs (verl drops the rest)
    assert sft.work.startswith("10 steps x 192 rows") and sft.gpus == 24
    assert grpo.work.startswith("150 steps x 96 prompts x 8") and "responses <= 1024" in grpo.work  # 960 // 96 x 15
    assert sft.basis.startswith("estimate:") and "S1, 0.5B full fine-tuning" in sft.basis
    assert grpo.basis.startswith("estimate: generation")
    assert sft.gpu_hours == pytest.approx(24 * sft.wall_s / 3600)
    assert line(bill, "merge-sft").gpus == 0 and line(bill, "upload").gpus == 0
    assert re.search(r"sft data: .*sft\.parquet: 1,000 rows, ~2,013 tokens a row", bill.table())
    assert f"{sft.memory}" != "-" and "%" in sft.memory  # the memory plan beside it

    team["sft"]["total_training_steps"] = 4
    team["sft"]["total_epochs"] = 1
    assert line(bill_of(write_team, team), "sft").work.startswith("4 steps")


def test_a_stage_longer_than_the_time_limit_runs_as_several_jobs(write_team, team, tmp_path):
    team["rl"].update(max_response_length=8192, ppo_max_token_len_per_gpu=32768, total_epochs=100)
    team["slurm"]["time_limit"] = "7-00:00:00"
    long = line(bill_of(write_team, team), "grpo")
    team["slurm"]["time_limit"] = "2:00:00"
    split = line(bill_of(write_team, team), "grpo")
    assert long.jobs == 1 and split.jobs == math_ceil(long.wall_s, 7200 - 300 - time_plan.GRPO_START_S - 1)
    assert split.wall_s > long.wall_s and f"({split.jobs} jobs)" in time_plan.Bill([split]).table()


def math_ceil(wall: float, usable: float) -> int:
    return -(-int(wall) // int(usable))


def metrics_run(logs, name: str, steps: list[dict], trainer: dict, model: str, extra: dict | None = None):
    """A finished run as the scripts leave it: <logs>/<run>.metrics.jsonl and its Hydra config beside."""
    (logs / f"{name}.metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "data": s}) + "\n"
                                                        for i, s in enumerate(steps)))
    hydra = logs / "hydra" / name / ".hydra"
    hydra.mkdir(parents=True)
    (hydra / "config.yaml").write_text(yaml.safe_dump({"trainer": trainer, **(extra or {}), "model": {"path": model}}))


def test_a_teams_own_run_replaces_the_estimate(write_team, team, tmp_path, model_dir):
    logs = tmp_path / "logs"
    steps = [{"train/global_tokens": 40_000, "timing_s/step": 9.0}] + [{"train/global_tokens": 20_000,
                                                                       "timing_s/step": 0.5}] * 3
    metrics_run(logs, "sft-qwen2.5-0.5b-gsm8k-77-20261201-000000", steps, {"n_gpus_per_node": 8, "nnodes": 1},
                str(model_dir))
    sft = line(bill_of(write_team, team), "sft")
    # 20,000 tokens in 0.5 s on 8 GPUs (the first, warm-up step left out): 5,000 tokens/s a GPU
    assert sft.basis == ("measured: your run sft-qwen2.5-0.5b-gsm8k-77-20261201-000000.metrics.jsonl, 5,000 tokens/s "
                         "a GPU over 3 steps")
    start = time_plan.START_S + find_shape(str(model_dir)).params * 4 / time_plan.LOAD_BYTES_PER_S
    saves = 1 * time_plan._save_s(find_shape(str(model_dir)), load(write_team(team))[0].sft, 3)
    assert sft.wall_s == pytest.approx(start + 10 * 192 * 2013 / (5000 * 24) + saves, rel=1e-3)

    # neither a run of another model nor one of another experiment whose name starts the same is this one's measurement
    metrics_run(logs, "sft-qwen2.5-0.5b-gsm8k-78-20261202-000000", steps, {"n_gpus_per_node": 8, "nnodes": 1},
                "/elsewhere/other-model")
    metrics_run(logs, "sft-qwen2.5-0.5b-gsm8k-long-79-20261203-000000", steps, {"n_gpus_per_node": 8, "nnodes": 1},
                str(model_dir))
    assert "77-20261201" in line(bill_of(write_team, team), "sft").basis


def test_a_grpo_run_on_another_layout_is_scaled_to_this_one(write_team, team, tmp_path, model_dir):
    steps = [{"timing_s/step": 60.0}] + [{"timing_s/step": t} for t in (30.0, 40.0, 35.0)]
    metrics_run(tmp_path / "logs", "grpo-qwen2.5-0.5b-gsm8k-9-20261201-000000", steps,
                {"n_gpus_per_node": 8, "nnodes": 1}, str(model_dir),
                {"data": {"train_batch_size": 96}, "actor_rollout_ref": {"rollout": {"n": 8}}})
    grpo = line(bill_of(write_team, team, ["grpo"]), "grpo")
    assert "median step 35.0 s over 3 steps of 768 responses on 8 GPUs, scaled to 768 on 24" in grpo.basis


def test_the_estimates_agree_with_the_benchmark_rows_they_come_from(example):
    """The speed of each benchmark setting in docs/benchmarks.md, as the plan estimates it for the same model, tokens
    and settings on one GPU, within 25% of every H200 figure the docs show for it, and the docs' table of estimates
    is what the code computes today."""
    estimates = {}
    attention = ["q_proj", "k_proj", "v_proj", "o_proj"]
    sft = {  # row: model, LoRA, checkpointing, tokens a micro-batch, samples a step, tokens a sample
        "S1": ("Qwen/Qwen2.5-0.5B-Instruct", None, False, 32768, 32, 1100),
        "S2": ("Qwen/Qwen2.5-1.5B-Instruct", None, False, 16384, 32, 1100),
        "L1": ("Qwen/Qwen3-32B", LoRA(rank=32, alpha=64), True, 8192, 1, 8062),
        "L3": ("Qwen/Qwen3-30B-A3B", LoRA(rank=32, alpha=64, target_modules=attention), True, 16384, 2, 8080),
    }
    for row, (model, lora, checkpointing, micro, batch, length) in sft.items():
        stage = SFT(**{**example["sft"], "model": model, "lora": lora, "gradient_checkpointing": checkpointing,
                       "max_token_len_per_gpu": micro, "train_batch_size": batch})
        speed, _ = time_plan.sft_speed(find_shape(model), stage, time_plan.Tokens(1, length, length ** 2, ""), 1, 1)
        measured = documented(row, r"\*\*([\d,]+)\*\*")
        assert measured and all(speed == pytest.approx(m, rel=0.25) for m in measured), (row, speed, measured)
        estimates[row] = f"{speed:,.0f}"
    for row, (model, micro) in {"G1": ("Qwen/Qwen2.5-0.5B-Instruct", 32768),
                                "G2": ("Qwen/Qwen2.5-1.5B-Instruct", 16384)}.items():
        rl = RL(**{**example["rl"], "model": model, "train_batch_size": 32, "rollout_n": 8, "ppo_mini_batch_size": 16,
                   "max_response_length": 1024, "ppo_max_token_len_per_gpu": micro})
        step, *_ = time_plan.grpo_step(find_shape(model), rl, 120, 1, 1)
        measured = documented(row, r"\*\*([\d.]+) s\*\*")
        assert measured and all(step == pytest.approx(m, rel=0.25) for m in measured), (row, step, measured)
        estimates[row] = f"{step:.2f}"
    table = BENCHMARKS.split("### 所要時間の見積もり")[1].split("\n### ")[0]
    rows = ([c.strip() for c in line.split("|")] for line in table.splitlines() if line.startswith("| "))
    shown = {cells[1]: cells[4] for cells in rows if cells[1] in estimates}
    assert shown == estimates


def documented(row: str, figure: str) -> list[float]:
    """The recipe's figures of a row of docs/benchmarks.md's results tables, on H200 with today's settings."""
    found = []
    for text in BENCHMARKS.splitlines():
        cells = [c.strip() for c in text.split("|")]
        if len(cells) > 3 and re.match(fr"{row}\b", cells[-2]) and "H200 × 1" in text:
            found += [float(m.replace(",", "")) for m in re.findall(figure, text)]
    return found


def test_plan_on_the_command_line(write_team, team, tmp_path):
    path = write_team(team)
    result = bridge("plan", "--team", str(path), "--stages", "sft,grpo")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Plan (wall time and GPU-hours per stage")
    assert [row.split()[0] for row in result.stdout.splitlines()[2::2][:4]] == ["sft", "merge-sft", "grpo", "merge-grpo"]
    assert "total" in result.stdout and "docs/benchmarks.md" in result.stdout

    wrong = bridge("plan", "--team", str(path), "--stages", "sft,dpo")
    assert wrong.returncode == 2 and "--stages: no stage dpo" in wrong.stderr

    team["sft"]["train_files"] = str(tmp_path / "missing.parquet")
    missing = bridge("plan", "--team", str(write_team(team)), "--stages", "sft")
    assert missing.returncode == 0 and "missing.parquet not readable here" in missing.stdout and " ? " in missing.stdout


def test_submit_prints_the_plan_of_what_it_queues(write_team, team, tmp_path):
    team["slurm"].update(nodes=1)
    team["slurm"].pop("nodelist")
    team["wandb"].update(mode="offline")
    result = bridge("submit", "--team", str(write_team(team)), "--stages", "sft,grpo", "--dry-run")
    assert result.returncode == 0, result.stderr
    plan = result.stdout.split("Plan (wall time")[1]
    assert [row.split()[0] for row in plan.splitlines()[2::2][:4]] == ["sft", "merge-sft", "grpo", "merge-grpo"]
    assert "    8  " in plan.splitlines()[2]  # one node of 8 GPUs
