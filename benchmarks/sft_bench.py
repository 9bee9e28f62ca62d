"""verl SFT throughput on one node: tokens/s, verl's train/mfu, step time and peak GPU memory.

    python benchmarks/sft_bench.py --arch 0.5b --gsm8k DIR --work DIR --label recipe \
        [--recipe templates/team.example.yaml] [-- verl overrides]

Offline by design (the GPU machine has no network): a random-weight Qwen2 model of the named size
(Qwen2.5-0.5B / 1.5B / 7B architecture values, vocabulary 151,936), a byte-level BPE tokenizer trained
on GSM8K, and GSM8K question/answer pairs packed into multi-turn conversations of about
--tokens tokens. Training runs through the recipe's own entrypoint (torchrun -m llm_bridge.job.verl_sft).
--recipe adds the speed knobs of the SFT script rendered from that team.yaml; overrides after -- come last.
Throughput is tokens (verl's train/global_tokens) over wall time from step --warmup to the last step.
--profile adds one step after the timed ones, recorded by verl's torch profiler, and summarizes
where its GPU time went (trace_summary.py).
Prints one JSON object and one Markdown row; appends both to <work>/results.jsonl.
"""

import json
import random
import statistics
from pathlib import Path

from common import add_recompute_fit, build_model, build_tokenizer, finish, load_gsm8k, new_run_dir, recipe_knobs, \
    recompute_fit_edit, run_logged
from common import parser as bench_parser
from llm_bridge.data import write_parquet  # temp file, then rename: a stopped run leaves no half file to reuse
from trace_summary import summarize


def build_data(gsm8k: Path, work: Path, target_tokens: int, n: int) -> tuple[Path, Path]:
    """A tokenizer trained on GSM8K, and n conversations of about target_tokens tokens each."""
    from transformers import AutoTokenizer

    out = work / f"sft-{target_tokens}x{n}.parquet"  # the size in the name: a cached file of other lengths is not reused
    pairs = load_gsm8k(gsm8k)
    tok_dir = build_tokenizer(pairs, work / "tokenizer")
    if out.is_file():
        return out, tok_dir
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    turns = [f"<|im_start|>user\n{p['question']}<|im_end|>\n<|im_start|>assistant\n{p['answer']}<|im_end|>\n" for p in pairs]
    lengths = [len(ids) for ids in tokenizer(turns, add_special_tokens=False)["input_ids"]]
    rng, rows = random.Random(0), []
    while len(rows) < n:
        messages, length = [], 0
        while length < target_tokens:
            i = rng.randrange(len(pairs))
            messages += [{"role": "user", "content": pairs[i]["question"]}, {"role": "assistant", "content": pairs[i]["answer"]}]
            length += lengths[i]
        rows.append({"messages": messages})
    write_parquet(rows, out)
    return out, tok_dir


def run(args, model: Path, data: Path, overrides: list[str], env: dict[str, str]) -> dict:
    run_dir = new_run_dir(args)
    steps_to_run = args.steps + 1 if args.profile else args.steps
    if args.profile:  # the extra last step; the timing below stops before it
        overrides = [*overrides, "profiler.enable=True", "profiler.tool=torch", f"profiler.save_path={run_dir / 'profile'}",
                     f"trainer.profile_interval=[{steps_to_run},{steps_to_run}]"]
    argv = ["torchrun", "--standalone", f"--nproc-per-node={args.gpus}", "-m", "llm_bridge.job.verl_sft",
            f"data.train_files={data}", f"data.val_files={data}", "data.messages_key=messages",
            f"data.max_length={args.max_length}", "data.truncation=right", "data.enable_thinking_default=null",
            f"model.path={model}", f"trainer.total_training_steps={steps_to_run}", "trainer.test_freq=-1",
            "trainer.save_freq=-1", "trainer.logger=[console,file]", f"trainer.default_local_dir={run_dir / 'ckpt'}",
            "checkpoint.save_contents=[]", f"hydra.run.dir={run_dir / 'hydra'}", "trainer.project_name=bench",
            f"trainer.experiment_name={args.label}", *overrides]
    rc = run_logged(argv, run_dir, {**env, "BRIDGE_STEP_LOG": str(run_dir / "steps.jsonl"),
                                    "VERL_FILE_LOGGER_PATH": str(run_dir / "metrics.jsonl")}, args.arch)
    result = {"arch": args.arch, "label": args.label, "gpus": args.gpus, "rc": rc, "overrides": overrides, "env": env, "log": str(run_dir / "log.txt")}
    if rc != 0 or not (run_dir / "steps.jsonl").is_file():
        result["error"] = (run_dir / "log.txt").read_text()[-3000:]
        return result
    steps = {s["step"]: s["time"] for s in map(json.loads, (run_dir / "steps.jsonl").read_text().splitlines())}
    metrics = {m["step"]: m["data"] for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
               if "train/global_tokens" in m["data"]}
    timed = [s for s in sorted(steps) if args.warmup < s <= args.steps and s in metrics]
    tokens = sum(metrics[s]["train/global_tokens"] for s in timed)
    seconds = steps[timed[-1]] - steps[args.warmup]
    result.update(
        tokens_per_s=round(tokens / seconds), tokens_per_s_per_gpu=round(tokens / seconds / args.gpus),
        mfu=round(statistics.mean(metrics[s].get("train/mfu", 0) for s in timed), 4),
        step_s=round(seconds / len(timed), 3), tokens_per_step=round(tokens / len(timed)),
        peak_mem_gb=round(max(metrics[s]["perf/max_memory_allocated_gb"] for s in timed), 1),
        peak_reserved_gb=round(max(metrics[s]["perf/max_memory_reserved_gb"] for s in timed), 1),
        loss=[round(metrics[s]["train/loss"], 4) for s in sorted(metrics)])  # a change that keeps the math keeps these
    traces = sorted((run_dir / "profile").glob("*rank0*.json*")) if args.profile else []
    if traces:
        result["profile"] = summarize(traces[0])
    return result


def arguments():
    parser = bench_parser(__doc__, "SFT script", default_steps=12)
    parser.add_argument("--warmup", type=int, default=4, help="steps left out of the timing")
    parser.add_argument("--tokens", type=int, default=1024, help="target conversation length")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--conversations", type=int, default=4000)
    parser.add_argument("--profile", action="store_true", help="profile one extra step after the timed ones")
    add_recompute_fit(parser, "sft")  # planned at the data.max_token_len_per_gpu given after --
    return parser


def main() -> None:
    args = arguments().parse_args()
    if args.recompute_fit:
        args.recipe_set.append(recompute_fit_edit(args, "sft", need_tokens=True))
    args.work.mkdir(parents=True, exist_ok=True)
    data, tok = build_data(args.gsm8k, args.work, args.tokens, args.conversations)
    model = build_model(args.arch, tok, args.work / f"model-{args.arch}")
    knobs, env = recipe_knobs(args.recipe, "sft/run_sft.sbatch", "SFT_ARGS", args.recipe_set) if args.recipe else ([], {})
    result = run(args, model, data, knobs + args.overrides, env)
    finish(args, result, [args.arch, args.label, args.gpus, result.get("tokens_per_s"), f"{result.get('mfu', 0):.3f}",
                          result.get("step_s"), result.get("peak_mem_gb")])


if __name__ == "__main__":
    main()
