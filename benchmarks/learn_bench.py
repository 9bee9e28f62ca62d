"""Does the recipe teach? SFT from random weights, then GRPO, graded on held-out problems (issue 38).

    python benchmarks/learn_bench.py --work DIR [--arms recipe,verl-example] [--grpo-steps 30]
    python benchmarks/learn_bench.py --work DIR --cpu --size tiny --train-steps 0 --test-steps 0 ...   # smoke test

One GPU (H200/H100). No pretrained weights and no network: the task is generated, the model starts random.

1. data: the arithmetic task (train/scripts/data_preprocess/arithmetic.py): 1- to 3-step problems to train on,
   3-step problems held out (never training ones), so the test is harder than training on average.
2. model: a BPE tokenizer trained on the problems and a randomly initialised Qwen2 of --size.
3. SFT: the rendered run_sft.sbatch (templates/team.example.yaml with this machine's values), `llm-bridge merge`.
4. GRPO from the SFT model, one run per --arms entry, each the rendered run_ppo.sbatch with its team.yaml
   edits (ARMS below), merged. Every arm sees the same prompts in the same order (data.seed). An entry ARM@LR
   runs that arm at its own learning rate. --grpo-from NAME starts the arms from an earlier GRPO run's merged
   model (<work>/models/NAME, e.g. carried over from another GPU lease) instead of SFT's: more GRPO steps than one
   lease holds, with a fresh optimizer; those runs are named <arm>-cont (-cont2 from a -cont model, ...), and
   their steps and held-out curve count on from the earlier run's (the curves show the earlier runs too, where
   their metrics are in <work>/logs). --continue does the same for each arm from its own newest model (from SFT's
   where it has none), so one command serves every lease; --carry-out DIR packs what the next lease needs (this
   run's GRPO models, all metrics, the SFT row) in pieces a device call brings back, and there the SFT stage is
   skipped: its row is carried (sft-row.json), its model is not. --grpo-time-limit S gives each GRPO run the
   recipe's time-limit save (llm_bridge/job/deadline.py, as under SLURM): it saves a final checkpoint and stops
   before S seconds, then is merged and graded like a finished run, so a lease's steps are never lost.
   --together runs the arms at the same time on the one GPU, each vLLM with a fixed KV cache (--kv-cache-gib):
   one start-up for all of them, times not comparable. Each arm is graded (6.) as soon as it ends, while slower ones train on, and an arm that fails
   leaves the others' rows in the table.
5. --drift-length L: one GRPO step of the SFT model with every response L tokens long (vLLM's ignore_eos; the
   model's position limit raised to fit) through the same rendered script: how far vLLM's log-probs drift from the
   actor's over response positions (issue 38 point 5), from the recipe's actor/rollout_drift/k3_kl_tokens_* metrics.
6. Held-out accuracy of every model: greedy, through `llm-bridge generate` (vLLM), graded by verl's gsm8k reward,
   the function GRPO trained on. During GRPO, verl's own validation grades the same problems every --test-freq steps
   and before the first (greedy, the run's vLLM, the same reward): a held-out curve, and a figure in hand when a run
   is cut short. --samples K adds K answers a prompt sampled at temperature 1: their mean and pass@K
   (what GRPO's reward sees, and how far sharpening could lift greedy decoding).

Writes <work>/results.md (the table and the commands), results.json, and curves.png (per GRPO step: mean reward,
response length, the rollout's drift, held-out accuracy). A rerun skips every stage whose output is there. Each
stage's wall time is recorded beside `llm-bridge plan`'s estimate of it (issue 39: the plan against the recipe's own
runs).

--cpu runs the same stages on a CPU (tests/cpu's verl platform and rollout, and its transformers stand-in for
vLLM's offline API): a smoke test of this script, not a figure.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "cpu"))
sys.path.insert(0, str(REPO))
import build_tiny  # noqa: E402  the tests' tokenizer trainer and tiny shape
import pipeline  # noqa: E402  the CPU platform's settings, and render/Stage/metrics shared with the tests
from llm_bridge.login import time_plan  # noqa: E402
from llm_bridge.login.loader import load  # noqa: E402

SIZES = {  # Qwen2 shapes a random start can learn the task in: ~25M parameters, and the tests' tiny one
    "small": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                  intermediate_size=1536, tie_word_embeddings=True),
    "tiny": build_tiny.TINY_SHAPE,
}
# GRPO arms: team.yaml rl edits and environment. recipe = team.example.yaml's algorithm (vLLM's log-probs as the
# old policy, no KL loss, the recipe's patches); verl-example = verl's GRPO example's (KL loss 0.001, old
# log-probs recomputed, verl as released); the last two are issue 38 point 5's corrections of the rollout's drift.
ARMS = {
    "recipe": ({}, {}),
    "verl-example": ({"old_log_probs": "recompute", "use_kl_loss": True, "kl_loss_coef": 0.001},
                     {"BRIDGE_VERL_PATCHES": "0"}),
    "recompute-is": ({"old_log_probs": "recompute", "rollout_correction": {"rollout_is": "token"}}, {}),
    "bypass-rs": ({"rollout_correction": {"rollout_rs": "seq_mean_k1", "rollout_rs_threshold": 1.001}}, {}),
}
CARRY_PIECE_MIB = 15  # --carry-out: a device call brings back files of at most 16 MiB (8 files, 64 MiB a call)
DRIFT_PROMPTS, DRIFT_N = 16, 4  # --drift-length: 64 responses, every span of positions filled 64 times over
# per GRPO step; the drift is the recipe's metric (verl_patches 8), or verl's own where the patches are off (recompute)
CURVES = (("critic/score/mean",), ("response_length/mean",), ("actor/rollout_drift/k3_kl", "rollout_corr/k3_kl"))


def parse_arms(text: str) -> list[tuple[str, str | None]]:
    """--arms "recipe,verl-example,recipe@1e-4" -> [(arm, learning rate or None for --grpo-lr), ...]."""
    arms = []
    for entry in filter(None, text.split(",")):
        arm, _, lr = entry.partition("@")
        if arm not in ARMS:
            raise SystemExit(f"--arms: no arm {arm!r}; choose from {', '.join(ARMS)} (ARM or ARM@LR, e.g. recipe@1e-4)")
        if lr:
            try:
                positive = float(lr) > 0
            except ValueError:
                positive = False
            if not positive:
                raise SystemExit(f"--arms: {entry!r}: the learning rate after @ must be a number above 0, e.g. recipe@1e-4")
        arms.append((arm, lr or None))
    if len(set(arms)) != len(arms):
        raise SystemExit(f"--arms: {text!r} names the same run twice")
    return arms


def run_name(arm: str, lr: str | None, grpo_from: str | None = None) -> str:
    """grpo-ARM[-lrLR], and from an earlier GRPO model -cont, -cont2, ... (one more than that model's)."""
    name = f"grpo-{arm}" + (f"-lr{lr}" if lr else "")
    if not grpo_from:
        return name
    _, cont, count = grpo_from.rpartition("-cont")
    earlier = int(count or 1) if cont and (count == "" or count.isdigit()) else 0
    return f"{name}-cont{earlier + 1 if earlier else ''}"


def record_of(model: Path) -> dict:
    """What learn_bench wrote beside a merged GRPO model ({} for SFT's or another's): grpo_steps, the GRPO steps
    behind it; from, the model it started from; runs, [[run, steps before it], ...], the runs that made it."""
    record = model / "learn_bench.json"
    return json.loads(record.read_text()) if record.is_file() else {}


def newest(models: Path, arm: str, lr: str | None) -> str:
    """--continue: the arm's last merged model in `models` (grpo-ARM, then -cont, -cont2, ...), or "sft" if none."""
    start = "sft"
    while (models / (name := run_name(arm, lr, None if start == "sft" else start)) / "config.json").is_file():
        start = name
    return start


def venv_shim(work: Path) -> Path:
    """The rendered scripts `source <venv>/bin/activate`. Where this Python is no venv (the GPU machine's
    interpreter with a --target site on PYTHONPATH), a folder whose activate puts this interpreter first."""
    if (Path(sys.prefix) / "bin" / "activate").is_file():
        return Path(sys.prefix)
    shim = work / "venv"
    (shim / "bin").mkdir(parents=True, exist_ok=True)
    (shim / "bin" / "activate").write_text(f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
    return shim


def team_config(args, work: Path) -> dict:
    team = yaml.safe_load((REPO / "templates" / "team.example.yaml").read_text())
    team["slurm"].update(nodes=1, gpus_per_node=args.gpus, cpus_per_task=os.cpu_count() or 2, partition="local",
                         time_limit="04:00:00")
    team["slurm"].pop("nodelist")
    team["environment"] = {"venv": str(venv_shim(work))}
    team["paths"] = {name: str(work / name) for name in ("checkpoints", "logs", "hf_home")}
    team["network"] = {}
    team["wandb"] = {"project": "learn-bench", "mode": "disabled"}
    team["huggingface"] = {"org": "local", "offline": True}
    data = work / "data"
    team["sft"].update(experiment_name="sft", model=str(work / "model"), train_files=str(data / "sft" / "train.parquet"),
                       val_files=str(data / "sft" / "test.parquet"), max_length=args.max_length,
                       train_batch_size=args.sft_batch, lr=args.sft_lr, lr_scheduler="cosine", warmup_ratio=0.05,
                       total_epochs=1000, total_training_steps=args.sft_steps, save_freq=args.sft_steps, test_freq=-1)
    team["rl"].update(experiment_name="grpo", model=str(work / "models" / (args.grpo_from or "sft")),
                      train_files=str(data / "rl" / "train.parquet"), val_files=str(data / "rl" / "test.parquet"),
                      reward_function=None, train_batch_size=args.prompts, ppo_mini_batch_size=args.prompts // args.updates,
                      rollout_n=args.n, max_prompt_length=args.max_length // 2, max_response_length=args.max_length // 2,
                      lr=args.grpo_lr, total_epochs=1000, total_training_steps=args.grpo_steps,
                      save_freq=args.grpo_steps, test_freq=args.test_freq or -1,
                      gpu_memory_utilization=args.gpu_memory_utilization)
    if args.cpu:
        team["sft"].update(pipeline.CPU_STAGE)
        team["rl"].update(pipeline.CPU_STAGE)
    return team


def planned(team: dict, work: Path, name: str) -> dict[str, float | None]:
    """`llm-bridge plan`'s wall time of the SFT and GRPO stages of `team` (an estimate for a GPU, also on --cpu)."""
    path = work / f"plan-{name}.yaml"
    path.write_text(yaml.safe_dump(team, sort_keys=False))
    config, problems = load(path)
    if config is None:
        raise SystemExit(f"{path}: {problems}")
    return {line.stage: line.wall_s for line in time_plan.plan(config, ["sft", "grpo"]).lines}


def build_data_and_model(args, work: Path, stage: pipeline.Stage) -> None:
    if not (work / "data" / "rl" / "test.parquet").is_file():
        split = []
        for flag, value in (("train", args.train), ("test", args.test), ("train-steps", args.train_steps),
                            ("test-steps", args.test_steps)):
            if value is not None:
                split += [f"--{flag}", str(value)]
        stage.run("data", [sys.executable, "train/scripts/data_preprocess/arithmetic.py", "--out", str(work / "data"),
                           *split])
    if (work / "model" / "config.json").is_file():
        return
    import pandas as pd
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, Qwen2Config

    sft = pd.read_parquet(work / "data" / "sft" / "train.parquet")  # the words SFT and GRPO will show the model
    corpus = [message["content"] for messages in sft["messages"] for message in messages] + build_tiny.CHAT_WORDS
    tokenizer = build_tiny.build_tokenizer(corpus, vocab_size=args.vocab, split_digits=True)
    config = Qwen2Config(**SIZES[args.size], vocab_size=len(tokenizer), max_position_embeddings=4096,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    partial = work / "model.partial"
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(work / "model")
    print(f"[model] {args.size}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"vocabulary {len(tokenizer)}", flush=True)


def long_model(sft: Path, out: Path, positions: int) -> Path:
    """The SFT model with room for `positions` (RoPE has no table to outgrow). What it says past the lengths SFT
    showed it is not the point of --drift-length; the two engines' numerics over a long context are."""
    if not (out / "config.json").is_file():
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(sft, partial)
        config = json.loads((partial / "config.json").read_text())
        config["max_position_embeddings"] = max(config["max_position_embeddings"], positions)
        (partial / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        partial.rename(out)
    return out


def drift_summary(logs: Path, name: str) -> dict | None:
    """The drift run's one step: vLLM's log-probs against the actor's (the recipe's actor/rollout_drift/ metrics of
    the step's first mini-batch, at the weights vLLM sampled with), overall and by span of response positions.
    None if the run logged no step (it failed)."""
    records = [json.loads(line) for path in logs.glob(f"{name}-local-*.metrics.jsonl") for line in path.read_text().splitlines()]
    step = next((r["data"] for r in records if "critic/score/mean" in r["data"]), None)
    if step is None:
        return None
    prefix = "actor/rollout_drift/k3_kl_tokens_"
    spans = sorted(((key.removeprefix(prefix), value) for key, value in step.items() if key.startswith(prefix)),
                   key=lambda span: int(re.search(r"\d+", span[0]).group()))  # 0_to_256, ..., from_16384
    return {"response_length_mean": step["response_length/mean"], "k3_kl": step["actor/rollout_drift/k3_kl"],
            "rollout_ppl": step["actor/rollout_drift/rollout_ppl"], "k3_kl_by_position": dict(spans)}


def generate(args, model: Path, data: Path, out: Path, stage: pipeline.Stage, name: str, *sampling: str) -> None:
    """Answers to `data`'s prompts through the recipe's own `llm-bridge generate`, greedy unless `sampling` flags are
    given: vLLM, or on a CPU tests/cpu's stand-in for vLLM's offline API (transformers). Resumable: a rerun answers
    only what is missing. --together: a model is graded while other arms still train on the GPU, so vLLM takes only
    their share of it."""
    share = ["--gpu-memory-utilization", str(args.gpu_memory_utilization)] if args.together else []
    command = pipeline.generate_command(model, data, out, "--max-tokens", str(args.max_length // 2), *sampling, *share,
                                        greedy=not sampling)
    stage.run(name, command, pipeline.VLLM_CPU_ENV if args.cpu else None)


def scores(data: Path, predictions: Path) -> list[tuple[dict, float]]:
    """Each row of `data` with its answer's score under verl's gsm8k reward (data_source openai/gsm8k), the score GRPO
    trains on; the answer is the prediction whose id is the row's extra_info.index."""
    import pandas as pd
    from verl.utils.reward_score import default_compute_score

    answers = {r["id"]: r.get("response") or "" for r in map(json.loads, predictions.read_text().splitlines())}
    return [(row, float(default_compute_score(row["data_source"], answers.get(str(row["extra_info"]["index"]), ""),
                                              row["reward_model"]["ground_truth"])))
            for row in pd.read_parquet(data).to_dict("records")]


def accuracy(test: Path, predictions: Path) -> float:
    """Held-out accuracy: the mean score of the answers."""
    graded = scores(test, predictions)
    share = sum(score for _, score in graded) / len(graded)
    print(f"held-out accuracy of {predictions.name}: {100 * share:.1f}%", flush=True)
    return share


def sampled(args, model: Path, test: Path, out: Path, stage: pipeline.Stage, name: str) -> dict[str, float]:
    """--samples K: K answers a held-out prompt at the rollout's temperature (1.0), through `llm-bridge generate`.
    Their mean accuracy is what GRPO's reward sees; pass@K (a prompt any answer gets right) bounds what sharpening
    can give greedy decoding. A GRPO run can raise greedy accuracy only where the two sit apart."""
    import pandas as pd

    repeated = test.with_name(f"{test.stem}-x{args.samples}.parquet")
    if not repeated.is_file():
        rows = pd.read_parquet(test).to_dict("records")
        copies = [{**row, "extra_info": {**row["extra_info"], "index": args.samples * n + k, "prompt_row": n}}
                  for n, row in enumerate(rows) for k in range(args.samples)]
        pd.DataFrame(copies).to_parquet(repeated)
    generate(args, model, repeated, out, stage, name, "--temperature", "1.0", "--top-p", "1.0")
    mean, pass_at = grade_samples(repeated, out)
    print(f"held-out, {args.samples} samples a prompt at temperature 1: mean {100 * mean:.1f}%, "
          f"pass@{args.samples} {100 * pass_at:.1f}%", flush=True)
    return {"sampled_accuracy": mean, f"pass_at_{args.samples}": pass_at}


def grade_samples(repeated: Path, predictions: Path) -> tuple[float, float]:
    """Mean accuracy of all sampled answers, and the share of prompts (extra_info.prompt_row) any answer gets right."""
    right: dict[int, list[float]] = {}
    for row, score in scores(repeated, predictions):
        right.setdefault(row["extra_info"]["prompt_row"], []).append(score)
    return (sum(map(sum, right.values())) / sum(map(len, right.values())),
            sum(max(group) for group in right.values()) / len(right))


def held_out_curve(records: list[dict]) -> list[tuple[int, float]]:
    """(step, held-out accuracy) of each of verl's validations in a run's metrics: its val-core mean, the share of
    problems the greedy answer solves (step 0: before the first update)."""
    return [(record["step"], value) for record in records
            for key, value in record["data"].items() if key.startswith("val-core/") and "/mean@" in key]


def carry_out(work: Path, out: Path, models: list[str]) -> list[Path]:
    """--carry-out: one tar, in pieces of CARRY_PIECE_MIB, of what another lease needs to go on from this one (the
    merged GRPO `models`, each with its lineage; every run's metrics; the SFT row; answers and results). There:
    `mkdir -p WORK && cat lb-carry.tar.part* | tar x -C WORK`, then the same command with --continue."""
    import io
    import tarfile

    paths = [work / "models" / name for name in models] + sorted((work / "logs").glob("*.metrics.jsonl")) + [
        *sorted(work.glob("predictions-*.jsonl")), *sorted(work.glob("samples*-*.jsonl")),
        *(work / name for name in ("sft-row.json", "results.md", "results.json", "curves.png"))]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in paths:
            if path.exists():
                tar.add(path, arcname=str(path.relative_to(work)))
    data, piece = buffer.getvalue(), CARRY_PIECE_MIB * 2**20
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("lb-carry.tar.part*"):  # an earlier pack's pieces would join this one's
        old.unlink()
    pieces = []
    for n, offset in enumerate(range(0, len(data), piece)):
        pieces.append(out / f"lb-carry.tar.part{n:02d}")
        partial = out / f"{pieces[-1].name}.partial"
        partial.write_bytes(data[offset:offset + piece])
        partial.rename(pieces[-1])
    print(f"[carry-out] {len(data) / 2**20:.0f} MiB in {len(pieces)} pieces in {out}: {', '.join(models) or 'no model'}",
          flush=True)
    return pieces


def curves(work: Path, arms: dict[str, list[dict]], held_out: dict[str, list[tuple[int, float]]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES) + 1, figsize=(5 * (len(CURVES) + 1), 3.6))
    for arm, points in held_out.items():
        if points:
            axes[-1].plot(*zip(*points), marker="o", label=arm)
    axes[-1].set_title("held-out accuracy (verl's validation, greedy)")
    axes[-1].set_xlabel("GRPO step")
    if any(held_out.values()):
        axes[-1].legend()
    for ax, keys in zip(axes, CURVES):
        for arm, steps in arms.items():
            key = next((k for k in keys if any(k in s for s in steps)), None)
            points = [(s["training/global_step"], s[key]) for s in steps if key in s]
            if points:
                ax.plot(*zip(*points), label=f"{arm} ({key})" if key != keys[0] else arm)
        ax.set_title(keys[0])
        ax.set_xlabel("GRPO step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(work / "curves.png", dpi=120)
    return work / "curves.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--arms", default="recipe,verl-example",
                        help=f"comma-separated, of {', '.join(ARMS)}, each ARM or ARM@LR (its own learning rate); "
                             "empty: SFT only (a later run with arms reuses it)")
    parser.add_argument("--together", action="store_true",
                        help="run the GRPO arms at the same time on the one GPU (each vLLM gets --kv-cache-gib)")
    parser.add_argument("--kv-cache-gib", type=float, default=4.0,
                        help="--together: each vLLM's KV cache. A fixed size, because vLLM's memory profiling "
                             "counts the other runs' memory as its own")
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--vocab", type=int, default=1024, help="BPE vocabulary trained on the problems")
    # the task's split: arithmetic.py's own defaults unless given
    parser.add_argument("--train", type=int, help="arithmetic.py --train: training problems")
    parser.add_argument("--test", type=int, help="arithmetic.py --test: held-out problems")
    parser.add_argument("--train-steps", help="arithmetic.py --train-steps")
    parser.add_argument("--test-steps", help="arithmetic.py --test-steps")
    parser.add_argument("--max-length", type=int, default=512, help="SFT max_length; GRPO prompt and response get half")
    parser.add_argument("--sft-steps", type=int, default=1000,
                        help="enough SFT that GRPO starts well above 0 held-out accuracy (docs/benchmarks.md)")
    parser.add_argument("--sft-batch", type=int, default=64)
    parser.add_argument("--sft-lr", type=float, default=1e-3)
    parser.add_argument("--grpo-steps", type=int, default=30)
    parser.add_argument("--prompts", type=int, default=64, help="prompts per GRPO step")
    parser.add_argument("--n", type=int, default=8, help="responses per prompt")
    parser.add_argument("--updates", type=int, default=2,
                        help="optimizer steps per GRPO step: each takes --prompts / UPDATES prompts' responses "
                             "(verl's ppo_mini_batch_size)")
    parser.add_argument("--grpo-lr", type=float, default=1e-5)
    parser.add_argument("--grpo-from", metavar="NAME",
                        help="start GRPO from <work>/models/NAME, an earlier GRPO run's merged model (e.g. "
                             "grpo-recipe-lr3e-5), instead of the SFT model")
    parser.add_argument("--continue", dest="continue_", action="store_true",
                        help="each arm goes on from its own newest merged model in <work>/models (grpo-ARM, then "
                             "-cont, -cont2, ...), or from SFT's where it has none: the same command every lease")
    parser.add_argument("--carry-out", type=Path, metavar="DIR",
                        help=f"at the end, write what a later lease needs to go on (this run's GRPO models, every "
                             f"run's metrics, the SFT row, the results) to DIR as pieces of at most "
                             f"{CARRY_PIECE_MIB} MiB, the size a device call brings back")
    parser.add_argument("--grpo-time-limit", type=int, metavar="SECONDS",
                        help="each GRPO run saves a final checkpoint and stops before SECONDS from its start (the "
                             "recipe's time-limit save: its longest step + 60 s ahead), then is merged and graded")
    parser.add_argument("--drift-length", type=int, metavar="L",
                        help="also one GRPO step of the SFT model with every response L tokens long (ignore_eos): "
                             "the rollout's drift from the actor over response positions (with the arms: --together "
                             "runs it beside them)")
    parser.add_argument("--test-freq", type=int, default=10,
                        help="verl validates GRPO on the held-out problems every N steps and before the first (a few "
                             "seconds each on the GPU); 0: never")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3,
                        help="vLLM's share of the GPU. Several runs on one GPU at once also need a fixed KV cache "
                             "(docs/benchmarks.md, the learning table's note)")
    parser.add_argument("--samples", type=int, default=0,
                        help="also grade K answers a held-out prompt sampled at temperature 1 (mean and pass@K: the "
                             "room GRPO has); 0: greedy only")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu", action="store_true", help="smoke test on a CPU (2 ranks), no figure")
    args, overrides = parser.parse_known_args()  # anything else goes to every GRPO run, e.g. trainer.* for a smoke test
    arms = parse_arms(args.arms)
    if args.updates < 1 or args.prompts % args.updates:
        raise SystemExit(f"--updates {args.updates}: must divide --prompts {args.prompts} (each optimizer step takes "
                         f"an equal share of a step's prompts), e.g. --updates {max(d for d in (1, 2, 4, 8) if args.prompts % d == 0)}")
    if args.cpu:
        args.gpus = 2
    if args.grpo_time_limit is not None and args.grpo_time_limit < 120:
        raise SystemExit(f"--grpo-time-limit {args.grpo_time_limit}: too short for a step and a save (the run stops "
                         "once less than its longest step + 60 s is left, counted from its start), e.g. 1200")
    if args.continue_ and args.grpo_from:
        raise SystemExit("--continue and --grpo-from both say where GRPO starts: --continue finds each arm's own newest "
                         "model, --grpo-from starts every arm from the one model it names. Fix: give one of them")
    work = args.work.resolve()
    if args.grpo_from and not (work / "models" / args.grpo_from / "config.json").is_file():
        raise SystemExit(f"--grpo-from {args.grpo_from}: no merged model in {work / 'models' / args.grpo_from}. Fix: "
                         "name a folder of models/ that an earlier run of this --work wrote (or that you copied "
                         "there), e.g. --grpo-from grpo-recipe")
    work.mkdir(parents=True, exist_ok=True)
    stage = pipeline.Stage(work)
    env = pipeline.CPU_ENV if args.cpu else {}

    def merge(name: str, checkpoint: Path) -> Path:
        out = work / "models" / name
        if not (out / "config.json").is_file():
            stage.run(f"merge-{name}", pipeline.merge_command(checkpoint, out))
        return out

    build_data_and_model(args, work, stage)
    team = team_config(args, work)
    plan = planned(team, work, "sft")
    planned_s = {"sft": plan["sft"], "merge-sft": plan["merge-sft"]}
    test = work / "data" / "rl" / "test.parquet"
    starts = [args.grpo_from or (newest(work / "models", arm, lr) if args.continue_ else "sft") for arm, lr in arms]
    names = [run_name(arm, lr, None if start == "sft" else start) for (arm, lr), start in zip(arms, starts)]
    sft_record = work / "sft-row.json"  # the SFT row, carried to a later lease without the SFT model (--carry-out)
    if not (work / "models" / "sft" / "config.json").is_file() and sft_record.is_file():
        needs = [f"--arms {arm}{'@' + lr if lr else ''} (no GRPO model of it to go on from)"
                 for (arm, lr), start in zip(arms, starts) if start == "sft"] + ["--drift-length"] * bool(args.drift_length)
        if needs:
            raise SystemExit(f"{work}: the SFT model is not here, only its row ({sft_record.name}, carried from another "
                             f"lease), and {' and '.join(needs)} starts from it. Fix: carry models/sft as well, or "
                             "start from an empty --work")
        rows = [json.loads(sft_record.read_text())]
    else:
        if not (work / "models" / "sft" / "config.json").is_file():
            rendered = pipeline.render(work, team, "rendered-sft")
            command = pipeline.sft_command(rendered) if args.cpu else ["bash", str(rendered / "sft" / "run_sft.sbatch")]
            stage.run("sft", command, env)
        generate(args, merge("sft", work / "checkpoints" / "sft" / "sft"), test, work / "predictions-sft.jsonl", stage,
                 "generate-sft")
        rows = [{"model": "SFT", "steps": args.sft_steps, "accuracy": accuracy(test, work / "predictions-sft.jsonl")}]
        if args.samples:
            rows[-1].update(sampled(args, work / "models" / "sft", test, work / f"samples{args.samples}-sft.jsonl",
                                    stage, "sample-sft"))
        sft_record.write_text(json.dumps(rows[0]) + "\n")
    start_of = dict(zip(names, starts))
    runs = {}  # name -> (command, environment) of each GRPO run still to do

    def grpo_command(rendered: Path, *settings: str) -> list[str]:
        """The rendered GRPO script with the benchmark's settings, then the command line's overrides."""
        same_prompts = f"data.seed={args.seed}"  # verl's default (null) shuffles the prompts anew each run
        fixed_kv = ([f"+actor_rollout_ref.rollout.engine_kwargs.vllm.kv_cache_memory_bytes={int(args.kv_cache_gib * 2**30)}"]
                    if args.together and not args.cpu else [])
        settings = [same_prompts, *settings, *fixed_kv, *overrides]
        return (pipeline.grpo_command(rendered, *settings) if args.cpu
                else ["bash", str(rendered / "ppo" / "run_ppo.sbatch"), *settings])

    for (arm, lr), name in zip(arms, names):
        edits, arm_env = ARMS[arm]
        if (work / "models" / name / "config.json").is_file():
            continue
        arm_team = yaml.safe_load(yaml.safe_dump(team))
        arm_team["rl"].update(experiment_name=name, model=str(work / "models" / start_of[name]), **edits,
                              **({"lr": float(lr)} if lr else {}))
        plan = planned(arm_team, work, name)
        planned_s.update({name: plan["grpo"], f"merge-{name}": plan["merge-grpo"]})
        rendered = pipeline.render(work, arm_team, f"rendered-{name}")
        runs[name] = (grpo_command(rendered, f"trainer.val_before_train={bool(args.test_freq)}"), {**env, **arm_env})
    drift_name = f"drift-{args.drift_length}" if args.drift_length else None
    drift = drift_summary(work / "logs", drift_name) if drift_name else None
    if drift_name and drift is None:
        prompt = team["rl"]["max_prompt_length"]
        positions = prompt + args.drift_length
        drift_team = yaml.safe_load(yaml.safe_dump(team))
        drift_team["rl"].update(
            experiment_name=drift_name, model=str(long_model(work / "models" / "sft", work / "models" /
                                                             f"sft-{positions}-positions", positions)),
            max_response_length=args.drift_length, train_batch_size=DRIFT_PROMPTS, ppo_mini_batch_size=DRIFT_PROMPTS,
            rollout_n=DRIFT_N, total_training_steps=1, save_freq=1, test_freq=-1,
            ppo_max_token_len_per_gpu=max(team["rl"]["ppo_max_token_len_per_gpu"], positions))
        rendered = pipeline.render(work, drift_team, f"rendered-{drift_name}")
        runs[drift_name] = (grpo_command(rendered, "trainer.val_before_train=False",
                                         "actor_rollout_ref.rollout.ignore_eos=True"), env)

    def starting(name: str) -> tuple:
        """(name, command, environment) of a run starting now: its time limit counts from here."""
        command, run_env = runs[name]
        if args.grpo_time_limit:
            from llm_bridge.job.deadline import DEADLINE_ENV  # the variable the recipe's time-limit save reads (imports verl)

            run_env = {**run_env, DEADLINE_ENV: str(int(time.time()) + args.grpo_time_limit)}
        return name, command, run_env
    steps_by_arm, held_out, graded = {}, {}, {}  # graded: name -> its table row, in the order the arms end

    def evaluate(name: str) -> None:
        label, behind = name.removeprefix("grpo-"), record_of(work / "models" / start_of[name])
        prior = behind.get("grpo_steps", 0)
        generate(args, merge(name, work / "checkpoints" / "grpo" / name), test, work / f"predictions-{name}.jsonl",
                 stage, f"generate-{name}")
        # the curves run from the lineage's first step: the earlier runs' metrics, where their logs are here
        runs_behind = [*behind.get("runs", []), [name, prior]]
        steps_by_arm[label], points = [], {}
        for run, before in runs_behind:
            logged = run == name or any((work / "logs").glob(f"{run}-local-*.metrics.jsonl"))
            records = pipeline.metrics(work / "logs", run) if logged else []
            run_steps = [m["data"] for m in records if "critic/score/mean" in m["data"]]
            steps_by_arm[label] += [{**step, "training/global_step": before + step["training/global_step"]}
                                    for step in run_steps]
            for step, value in held_out_curve(records):  # a run's last validation is the next one's step 0: keep one
                points.setdefault(before + step, value)
        this_run = run_steps  # the lineage ends with this run
        held_out[label] = sorted(points.items())
        rewards = [s["critic/score/mean"] for s in steps_by_arm[label]]
        record = work / "models" / name / "learn_bench.json"
        if not record.is_file():  # GRPO steps behind this model, for a run that starts from it (--grpo-from)
            record.write_text(json.dumps({"grpo_steps": prior + len(this_run), "from": start_of[name],
                                          "runs": runs_behind}) + "\n")
        graded[name] = {"model": f"GRPO ({label}" + (f", from {start_of[name]} at step {prior})" if prior else ")"),
                        "steps": prior + len(this_run), "steps_this_run": len(this_run),
                        "accuracy": accuracy(test, work / f"predictions-{name}.jsonl"),
                        **({"train_reward_first": rewards[0], "train_reward_last": rewards[-1]} if rewards else {}),
                        **({"step_s_median": statistics.median(s["timing_s/step"] for s in this_run)} if this_run else {})}
        if args.samples:
            graded[name].update(sampled(args, work / "models" / name, test, work / f"samples{args.samples}-{name}.jsonl",
                                        stage, f"sample-{name}"))

    failed = None
    if args.together:  # each arm is graded as soon as it ends, while the slower ones train on
        try:
            stage.run_together([starting(name) for name in runs],
                               on_done=lambda name: None if name == drift_name else evaluate(name))
        except SystemExit as error:  # the arms that finished keep their rows; the failure is reported at the end
            failed = error
    for name in names:  # else one after another, each evaluated before the next starts (a cut-short lease keeps it)
        if args.together and name in runs:
            continue  # graded above, or failed
        if name in runs:
            stage.run(*starting(name))
        evaluate(name)
    if drift_name in runs and not args.together:  # after the arms: their rows matter more to a lease cut short
        stage.run(*starting(drift_name))
    if drift_name in runs:
        drift = drift_summary(work / "logs", drift_name)
    rows += [graded[name] for name in names if name in graded]
    png = curves(work, steps_by_arm, held_out)
    argv = " ".join(["python", "benchmarks/learn_bench.py", *sys.argv[1:]])
    shared = " (the GPU shared, --together)" if args.together else ""
    columns = ["model", "steps", "held-out accuracy", "train reward, first step -> last", f"s a step, median{shared}"]
    columns += [f"sampled at temperature 1: mean, pass@{args.samples}"] * bool(args.samples)
    table = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for row in rows:
        cells = [row["model"], str(row["steps"]), f"{100 * row['accuracy']:.1f}%",
                 f"{row['train_reward_first']:.3f} -> {row['train_reward_last']:.3f}" if "train_reward_last" in row else "",
                 f"{row['step_s_median']:.1f}" if "step_s_median" in row else ""]
        if args.samples:
            cells.append(f"{100 * row['sampled_accuracy']:.1f}%, {100 * row[f'pass_at_{args.samples}']:.1f}%"
                         if f"pass_at_{args.samples}" in row else "")
        table.append("| " + " | ".join(cells) + " |")
    machine = "CPU (smoke test)" if args.cpu else subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    during = [f"| {arm} | " + ", ".join(f"{step}: {100 * value:.1f}%" for step, value in points) + " |"
              for arm, points in held_out.items() if points]
    if during:
        during = ["Held-out accuracy during GRPO (verl's validation: greedy, the run's vLLM, the same reward; "
                  "step 0 is before the first update):", "", "| arm | step: accuracy |", "|---|---|", *during, ""]
    times = ["| stage | llm-bridge plan | measured |", "|---|---|---|"]
    times += [f"| {name} | {time_plan.duration(planned_s[name])} | {time_plan.duration(stage.times[name])} |"
              for name in planned_s if name in stage.times]
    if drift:
        drift_lines = [f"vLLM's log-probs against the actor's over response positions (--drift-length {args.drift_length}: one "
                       f"GRPO step of the SFT model, {DRIFT_PROMPTS * DRIFT_N} responses of "
                       f"{drift['response_length_mean']:.0f} tokens on average; rollout perplexity "
                       f"{drift['rollout_ppl']:.3f}), K3 KL per token:", "", "| response positions | K3 KL |", "|---|---|",
                       *[f"| {span.replace('_', ' ')} | {value:.2e} |" for span, value in drift["k3_kl_by_position"].items()],
                       f"| all | {drift['k3_kl']:.2e} |", ""]
        during += drift_lines
    (work / "results.md").write_text("\n".join([f"`{argv}` on {machine}", "", *table, "", *during, f"![curves]({png.name})", "",
                                                "Wall time of each stage (the plan estimates a GPU run):", "", *times, ""]))
    (work / "results.json").write_text(json.dumps({"argv": argv, "machine": machine, "rows": rows,
                                                   "steps": steps_by_arm, "held_out": held_out, "drift": drift, "times_s": stage.times,
                                                   "planned_s": planned_s}, indent=1))
    print("\n".join(table + [""] + during + times))
    print(f"-> {work / 'results.md'}, {png}")
    if args.carry_out:
        carry_out(work, args.carry_out, [name for name in names if name in graded])
    if failed:
        raise SystemExit(f"{failed}\nThe arms that finished are graded in {work / 'results.md'}.")


if __name__ == "__main__":
    try:
        main()
    except pipeline.StageFailed as failure:
        raise SystemExit(str(failure))
