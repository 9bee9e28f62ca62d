"""verl GRPO step time on one node: step and rollout time, rollout tokens/s, peak GPU memory.

    python benchmarks/grpo_bench.py --arch 0.5b --gsm8k DIR --work DIR --label recipe \
        [--recipe templates/team.example.yaml] [-- verl overrides]

Offline, like sft_bench.py: a random-weight Qwen2 model with Qwen2.5-<arch>'s shapes (or a dense Qwen3 shape,
--arch qwen3-8b, its weights written for vLLM to load) and verl's GSM8K RL prompts.
--vocab qwen (the default) grows the GSM8K tokenizer to Qwen2.5's 151,936 ids with plain added
tokens, so the output layer and log-probs cost what they cost for Qwen and every sampled id decodes;
--vocab gsm8k keeps the tokenizer's own 25,577 (the figures of the first GRPO table in docs/benchmarks.md).
A random model rarely samples the end token, so nearly every response runs to --response-length: each
variant generates the same number of tokens. The workload (prompts per step, responses per prompt,
lengths) is fixed by this script's flags for every variant. The argv below is verl's example algorithm
(KL loss, old log-probs recomputed); --recipe adds the speed knobs of the GRPO script rendered from that
team.yaml, including the recipe's two algorithm switches (use_kl_loss, rollout_correction.bypass_mode),
which override the example's; overrides after -- come last. Runs the recipe's entrypoint
(python3 -m llm_bridge.job.verl_ppo) with vLLM rollout. Step 1 (compilation, CUDA graphs) is left out.
Prints one JSON object and one Markdown row; appends both to <work>/results.jsonl.
"""

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import (QWEN_VOCAB, REPO, add_recompute_fit, build_model, build_tokenizer, finish, load_gsm8k, new_run_dir,
                    pad_tokenizer, recipe_knobs, recompute_fit_edit, run_logged)
from common import parser as bench_parser
from llm_bridge.data import write_parquet  # temp file, then rename: a stopped run leaves no half file to reuse


def build_data(gsm8k: Path, work: Path) -> Path:
    """verl's GSM8K RL rows, made by the recipe's own preprocessor (train/scripts/data_preprocess/gsm8k.py)."""
    out = work / "grpo.parquet"
    if out.is_file():
        return out
    spec = importlib.util.spec_from_file_location("gsm8k_prep", REPO / "train/scripts/data_preprocess/gsm8k.py")
    prep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prep)
    convert = prep.to_rl_row("train")
    write_parquet([convert(i, row) for i, row in enumerate(load_gsm8k(gsm8k))], out)
    return out


class GpuMemory(threading.Thread):
    """Every 0.5 s, memory.used over this run's GPUs and per process (nvidia-smi; CUDA_VISIBLE_DEVICES when
    set, so two runs can share a machine): vLLM's KV cache never shows in torch's own counters. Each sample is
    a line of <run_dir>/gpu_memory.tsv (seconds since start, steps finished, total MiB, pid:MiB ...), so a
    peak can be placed in a step's phases; `peak_by_process` is the split at the highest total."""

    def __init__(self, timeline: Path, metrics: Path, interval_s: float = 0.5):
        super().__init__(daemon=True)
        self.timeline, self.metrics, self.interval_s = timeline, metrics, interval_s
        self.peak_mib, self.peak_by_process, self.names = 0, {}, {}
        self.stop = threading.Event()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        self.select = [f"--id={visible}"] if visible else []

    def query(self, what: str) -> list[list[str]]:
        out = subprocess.run(["nvidia-smi", *self.select, f"--query-{what}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True).stdout
        return [[cell.strip() for cell in line.split(",")] for line in out.splitlines() if line.strip()]

    def record(self, seconds: float, steps: int, total_mib: int, by_pid: dict[int, int]) -> str:
        """Keep the peak and its per-process split; return the timeline line."""
        for pid in by_pid.keys() - self.names.keys():
            self.names[pid] = process_name(pid)
        if total_mib > self.peak_mib:
            self.peak_mib = total_mib
            self.peak_by_process = {f"{pid} {self.names[pid]}": mib for pid, mib in by_pid.items()}
        return f"{seconds:.1f}\t{steps}\t{total_mib}\t" + " ".join(f"{pid}:{mib}" for pid, mib in sorted(by_pid.items()))

    def sample(self, seconds: float) -> str:
        total = sum(int(row[0]) for row in self.query("gpu=memory.used"))
        apps = {int(row[0]): int(row[1]) for row in self.query("compute-apps=pid,used_memory")
                if len(row) == 2 and row[0].isdigit() and row[1].isdigit()}  # "[N/A]" while one exits
        steps = len(self.metrics.read_text().splitlines()) if self.metrics.is_file() else 0
        return self.record(seconds, steps, total, apps)

    def run(self):
        start = time.monotonic()
        with self.timeline.open("w") as out:
            while not self.stop.wait(self.interval_s):
                out.write(self.sample(time.monotonic() - start) + "\n")
                out.flush()


def process_name(pid: int) -> str:
    """A short name for a GPU process: Ray workers and vLLM's engine set their title (ray::WorkerDict...)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")[:60]
    except OSError:
        return "?"


def run(args, model: Path, data: Path, overrides: list[str], env: dict[str, str]) -> dict:
    run_dir = new_run_dir(args, prefix="grpo-")
    metrics_file = run_dir / "metrics.jsonl"
    argv = [sys.executable, "-m", "llm_bridge.job.verl_ppo",
            "algorithm.adv_estimator=grpo", "algorithm.use_kl_in_reward=False",
            f"data.train_files={data}", f"data.val_files={data}", f"data.train_batch_size={args.prompts}",
            f"data.max_prompt_length={args.prompt_length}", f"data.max_response_length={args.response_length}",
            # main() checks every prompt fits (GSM8K's longest is 243 tokens), so verl's own filter would drop nothing,
            # yet `datasets` pickles the padded tokenizer (126k added tokens) to fingerprint it: 30 s a run on H6.
            "data.filter_overlong_prompts=False", "data.truncation=error",
            f"actor_rollout_ref.model.path={model}", "actor_rollout_ref.actor.optim.lr=1e-6",
            f"actor_rollout_ref.actor.ppo_mini_batch_size={args.mini_batch}",
            "actor_rollout_ref.actor.use_kl_loss=True", "actor_rollout_ref.actor.kl_loss_coef=0.001",
            "actor_rollout_ref.actor.kl_loss_type=low_var_kl", "actor_rollout_ref.actor.entropy_coeff=0",
            "actor_rollout_ref.rollout.name=vllm", f"actor_rollout_ref.rollout.n={args.n}",
            f"trainer.n_gpus_per_node={args.gpus}", "trainer.nnodes=1", f"trainer.total_training_steps={args.steps}",
            "trainer.val_before_train=False", "trainer.test_freq=-1", "trainer.save_freq=-1",
            "trainer.logger=[console,file]", "trainer.project_name=bench", f"trainer.experiment_name={args.label}",
            f"trainer.default_local_dir={run_dir / 'ckpt'}", f"hydra.run.dir={run_dir / 'hydra'}",
            f"+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH={metrics_file}",
            "+ray_kwargs.ray_init.runtime_env.worker_process_setup_hook=llm_bridge.job.verl_patches.apply",
            *overrides]
    memory = GpuMemory(run_dir / "gpu_memory.tsv", metrics_file)
    memory.start()
    rc = run_logged(argv, run_dir, {**env, "VERL_FILE_LOGGER_PATH": str(metrics_file)}, args.arch)
    memory.stop.set()
    result = {"arch": args.arch, "vocab": args.vocab, "label": args.label, "gpus": args.gpus, "rc": rc, "env": env,
              "overrides": overrides,
              "workload": {"prompts": args.prompts, "n": args.n, "prompt_length": args.prompt_length,
                           "response_length": args.response_length, "mini_batch": args.mini_batch},
              "log": str(run_dir / "log.txt"), "peak_gpu_mem_gb": round(memory.peak_mib / 1024, 1),
              "peak_gpu_mem_by_process_mib": memory.peak_by_process}
    steps = [m["data"] for m in map(json.loads, metrics_file.read_text().splitlines())
             if "timing_s/step" in m["data"]] if metrics_file.is_file() else []
    if rc != 0 or len(steps) < 2:
        result["error"] = (run_dir / "log.txt").read_text()[-4000:]
        return result
    timed = steps[1:]  # step 1 pays for compilation and CUDA graph capture

    def mean(key):
        values = [s[key] for s in timed if key in s]
        return round(statistics.mean(values), 3) if values else None

    responses = args.prompts * args.n
    result.update(step_s=mean("timing_s/step"), gen_s=mean("timing_s/gen"),
                  response_length=mean("response_length/mean"),
                  rollout_tokens_per_s=round(statistics.mean(s["response_length/mean"] * responses / s["timing_s/gen"] for s in timed)),
                  throughput_per_gpu=mean("perf/throughput"),
                  # vLLM's log-probs against the actor's at the same weights (verl_patches 8), over response lengths
                  rollout_drift={k.rsplit("/", 1)[1]: mean(k) for k in ("actor/rollout_drift/kl", "actor/rollout_drift/k3_kl",
                                                                       "actor/rollout_drift/chi2_token",
                                                                       "actor/rollout_drift/chi2_seq")},
                  timing={k: mean(k) for k in sorted(timed[-1]) if k.startswith("timing_s/")}, steps_timed=len(timed))
    return result


def grpo_model(arch: str, vocab: str, gsm8k: Path, work: Path) -> Path:
    tokenizer = build_tokenizer(load_gsm8k(gsm8k), work / "tokenizer")
    if vocab == "gsm8k":
        return build_model(arch, tokenizer, work / f"grpo-model-{arch}", vocab_size=None, weights=True)
    tokenizer = pad_tokenizer(tokenizer, work / "tokenizer-qwen-vocab")
    return build_model(arch, tokenizer, work / f"grpo-model-{arch}-qwen-vocab", vocab_size=QWEN_VOCAB, weights=True)


def longest_prompt(model: Path, data: Path) -> int:
    """The longest prompt in data, in tokens of model's tokenizer, chat template included (as verl counts it)."""
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    texts = [tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
             for messages in pq.read_table(data, columns=["prompt"]).column("prompt").to_pylist()]
    return max(map(len, tokenizer(texts, add_special_tokens=False)["input_ids"]))


def main() -> None:
    parser = bench_parser(__doc__, "GRPO script", default_steps=4)
    parser.add_argument("--prompts", type=int, default=64, help="prompts per step (data.train_batch_size)")
    parser.add_argument("--n", type=int, default=8, help="responses per prompt")
    parser.add_argument("--mini-batch", type=int, default=32, help="prompts per actor update (ppo_mini_batch_size)")
    parser.add_argument("--prompt-length", type=int, default=512)
    parser.add_argument("--response-length", type=int, default=1024)
    parser.add_argument("--vocab", choices=["qwen", "gsm8k"], default="qwen")
    add_recompute_fit(parser, "rl")  # the actor's update, at its ppo_max_token_len_per_gpu (an override after -- wins)
    args = parser.parse_args()
    if args.recompute_fit:
        args.recipe_set.append(recompute_fit_edit(args, "rl"))
    args.work.mkdir(parents=True, exist_ok=True)
    model = grpo_model(args.arch, args.vocab, args.gsm8k, args.work)
    knobs, env = recipe_knobs(args.recipe, "ppo/run_ppo.sbatch", "PPO_ARGS", args.recipe_set) if args.recipe else ([], {})
    data = build_data(args.gsm8k, args.work)
    longest = longest_prompt(model, data)
    if longest > args.prompt_length:
        raise SystemExit(f"the longest prompt has {longest} tokens, more than --prompt-length {args.prompt_length}; "
                         f"raise --prompt-length to at least {longest}")
    result = run(args, model, data, knobs + args.overrides, env)
    finish(args, result, [args.arch, args.label, args.gpus, result.get("step_s"), result.get("gen_s"),
                          result.get("rollout_tokens_per_s"), result["peak_gpu_mem_gb"]])


if __name__ == "__main__":
    main()
