"""`llm-bridge plan`: each stage's wall time and GPU-hours before anything is queued, with the memory plan beside it.

Work comes from the data: the training files' rows and tokens, counted with the model's own tokenizer
(tokenizer.json from the model's directory or paths.hf_home) on a fixed sample of 2,000 rows, and the steps verl
takes from them (its data loaders drop the last incomplete batch). Speed comes from the recipe's measurements
(docs/benchmarks.md), each figure labelled with its row and GPU, or from the team's own run of the same experiment
and model (its metrics JSONL and Hydra config in paths.logs: step times and tokens), which replaces the estimate.

  SFT    tokens x verl's FLOPs a token (6 x active parameters + 6 x sequence x query width x layers: verl's
         flops_counter, what its train/mfu divides by) / (GPUs x MFU x 989 TFLOP/s), MFU measured per kind of run;
         a step takes at least its FSDP traffic (weights gathered twice a micro-batch) and verl's fixed cost a step
  GRPO   a step = generation (max_response_length x one decode step of vLLM) + the actor's update of every prompt and
         response token (as SFT, with a forward pass more each for recompute and the reference model) + the rest
  merge  the model read and written once (no GPU); upload: the merged model's bytes; eval: an upper bound
Start-up (imports, model load, vLLM's start) and checkpoint writes are added per job; a stage longer than
slurm.time_limit runs as several jobs (each saves, requeues and resumes) and pays start-up again for each.
"""

import json
import math
import random
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from llm_bridge.login.config import TeamConfig, local_path
from llm_bridge.login.model_shape import Shape, find_config, find_shape
from llm_bridge.login.rules import TOKENS_PER_MESSAGE, _parquet_rows, conversation, token_counts

PEAK_FLOPS = 989e12  # bf16 dense, H100 and H200: what verl's train/mfu divides by
SAMPLE_ROWS = 2000   # rows tokenized to measure a dataset's tokens (a fixed random sample; the rest scale)


@dataclass(frozen=True)
class Measured:
    value: float
    source: str  # the docs/benchmarks.md row and GPU it comes from


# verl's train/mfu of the recipe's SFT, by kind of run (docs/benchmarks.md, one GPU)
MFU_FULL_SMALL = Measured(0.38, "S1, 0.5B full fine-tuning on H200; H100 0.31")
MFU_FULL = Measured(0.50, "S2, 1.5B full fine-tuning on H200")
MFU_LORA = Measured(0.47, "L1, Qwen3-32B LoRA on H200")
MFU_LORA_MOE = Measured(0.23, "L3, Qwen3-30B-A3B LoRA on H200")
CHECKPOINTING = 0.75        # full fine-tuning with checkpointing runs 8 passes of N where verl counts 6 (not measured)
MULTI_GPU = Measured(0.87, "S3: 0.84-0.91 of one GPU's speed a GPU on 2 and 4 H200")
# vLLM's decode step in GRPO: fixed cost (scheduler, sampler over the vocabulary) + the weights read once from HBM
DECODE_FIXED_S = Measured(0.0125, "G1, G2: 12.5 and 13.5 ms a token for 256 responses of 0.5B and 1.5B on H200")
HBM_BYTES_PER_S = 3.35e12   # H100 SXM; the H200's 4.8 makes the same step shorter
GRPO_STEP_FIXED_S = Measured(0.9, "G1: the step's rest besides generation and update (weight sync, rewards), H200")
# A step of verl's SFT trainer costs at least a fixed time (loading the batch, kernel launches, the optimizer, the
# metrics' syncs), which only a small model reaches. Fitted minimax to learn_bench's SFT of a 24.5M-parameter model:
# 300 and 1,000 steps on one H100 lease (78 s, 132 s), 1,000 on another (102 s), 600 and 2,000 on two H200 leases
# (136 s, 170 s); every run within 22%, the lease-to-lease spread (132 s and 102 s for one run) being most of it
SFT_STEP_FLOOR_S = Measured(0.040, "learn_bench: 5 runs of 300-2,000 steps of a 24.5M model, H100 and H200")
START_S = 82                # imports, process group, verl's tokenizing of the data, the first batch (the same fit)
# Not measured yet: assumed, and replaced by a team's own run
GRPO_START_S = 150          # as SFT's, plus Ray's and vLLM's start
LOAD_BYTES_PER_S = 1e9      # the model from the shared home, on rank 0
SAVE_BYTES_PER_S = 1e9      # a checkpoint to the shared home, per node
MERGE_START_S = 32          # learn_bench's 24.5M-parameter model: 23-46 s on five hosts; 32 s is their middle
MERGE_BYTES_PER_S = 0.5e9   # read shards + write the merged model
UPLOAD_BYTES_PER_S = 100e6
# FSDP gathers every bf16 weight for the forward and again for the backward of each micro-batch, and full
# fine-tuning reduce-scatters fp32 gradients: bandwidth a GPU (assumed: NVLink in a node, one RoCE NIC across nodes)
INTRA_NODE_BYTES_PER_S = 150e9
INTER_NODE_BYTES_PER_S = 40e9
VLLM_START_S = 120
PREFILL_MFU = 0.4           # prompts are read in large batches, compute-bound
VLLM_SEQS = 256             # vLLM's default max_num_seqs: responses decoded together


@dataclass
class Tokens:
    rows: int
    mean: float          # tokens a row (after max_length)
    squares: float       # mean of the squared length (attention's share)
    how: str


@dataclass
class Line:
    stage: str
    gpus: int
    work: str
    wall_s: float | None  # None: not planned (basis says why)
    basis: str
    memory: str = "-"
    jobs: int = 1
    steps: int | None = None  # a training stage's steps (verl's count from the data)

    @property
    def gpu_hours(self) -> float:
        return self.gpus * (self.wall_s or 0) / 3600


@dataclass
class Bill:
    lines: list[Line]
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        out = ["Plan (wall time and GPU-hours per stage; queue waits not included):",
               f"  {'stage':<11}{'GPUs':>5}  {'wall':>9}{'GPU-h':>9}  {'peak GiB/GPU':<14}work"]
        for line in self.lines:
            gpu_h = f"{line.gpu_hours:.1f}" if line.gpus and line.wall_s is not None else "-"
            jobs = f" ({line.jobs} jobs)" if line.jobs > 1 else ""
            out.append(f"  {line.stage:<11}{line.gpus:>5}  {duration(line.wall_s):>9}{gpu_h:>9}  {line.memory:<14}"
                       f"{line.work}{jobs}")
            out.append(f"  {'':<11}{'':>5}  {'':>9}{'':>9}  {'':<14}{line.basis}")
        total = sum(line.wall_s or 0 for line in self.lines)
        label = "total" if all(line.wall_s is not None for line in self.lines) else "total, ? left out"
        out.append(f"  {label:<18}{duration(total):>9}{sum(line.gpu_hours for line in self.lines):>9.1f}")
        out += [f"  {note}" for note in self.notes]
        return "\n".join(out)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
    return f"{seconds / 3600:.1f} h"


# -- the data ------------------------------------------------------------------------------------------------------

def _texts(path: Path, key: str) -> tuple[int, list[tuple[str, int]]] | None:
    """(rows, (text, messages) of a fixed random sample of rows) of a conversations column; None when unreadable."""
    import pyarrow.parquet as pq  # a dependency of the package: the login node's .venv has it

    try:
        column = pq.read_table(path, columns=[key]).column(key)
    except Exception:  # missing, not parquet, no such column: the plan says it could not read the file
        return None
    rows = len(column)
    picks = range(rows) if rows <= SAMPLE_ROWS else sorted(random.Random(0).sample(range(rows), SAMPLE_ROWS))
    return rows, [conversation(column[i].as_py()) for i in picks]


def count_tokens(path: str, key: str, model: str, hf_home: str, max_length: int | None) -> Tokens | None:
    """A conversations column's rows and tokens a row, with the model's tokenizer (4 characters a token without
    one), each row cut at max_length as verl cuts it."""
    found = _texts(local_path(path), key)
    if found is None:
        return None
    rows, texts = found
    lengths = token_counts(model, hf_home, texts)
    how = f"{model}'s tokenizer"
    if lengths is None:
        lengths = [len(text) / 4 + TOKENS_PER_MESSAGE * n for text, n in texts]
        how = f"4 characters a token (no tokenizer.json for {model} here: download it for a count)"
    if max_length:
        lengths = [min(n, max_length) for n in lengths]
    sampled = "" if len(texts) == rows else f", {len(texts):,} of {rows:,} rows"
    n = max(len(lengths), 1)
    return Tokens(rows, sum(lengths) / n, sum(x * x for x in lengths) / n, how + sampled)


# -- speed -----------------------------------------------------------------------------------------------------------

def active_params(shape: Shape) -> float:
    """What verl's flops_counter multiplies by 6: every linear weight a token passes through (the routed experts'
    top_k only) and the embeddings twice."""
    attention = shape.hidden * (2 * shape.q_dim + 2 * shape.kv_dim)
    if shape.moe:
        mlp = 3 * shape.hidden * shape.top_k * shape.moe_intermediate + shape.hidden * shape.experts
    else:
        mlp = 3 * shape.hidden * shape.intermediate
    return shape.layers * (attention + mlp) + 2 * shape.vocab * shape.hidden


def flops_per_token(shape: Shape, tokens: Tokens | None, passes: float = 6) -> float:
    """verl's FLOPs per token of samples with tokens' lengths: passes x active parameters + passes x s x q x layers
    (its attention term, with the mean of s^2 / the mean of s for s)."""
    s = tokens.squares / tokens.mean if tokens and tokens.mean else 0.0
    return passes * active_params(shape) + passes * s * shape.q_dim * shape.layers


def sft_mfu(shape: Shape, stage, gpus: int) -> tuple[float, str]:
    if stage.lora is not None:
        m = MFU_LORA_MOE if shape.moe else MFU_LORA
        mfu, what = m.value, m.source
    elif shape.moe:
        mfu, what = MFU_LORA_MOE.value, f"{MFU_LORA_MOE.source}; MoE full fine-tuning not measured"
    elif shape.params < 1e9:
        mfu, what = MFU_FULL_SMALL.value, MFU_FULL_SMALL.source
    else:
        mfu, what = MFU_FULL.value, MFU_FULL.source
        if stage.gradient_checkpointing:
            mfu, what = mfu * CHECKPOINTING, f"{what}; x{CHECKPOINTING} for checkpointing's recompute, not measured"
    if stage.gradient_checkpointing and stage.recompute_layers and stage.recompute_layers < shape.layers and (
            stage.lora is not None or shape.moe or shape.params >= 1e9):  # the MFUs above that include the recompute
        kept = 1 - stage.recompute_layers / shape.layers
        passes = 6 if stage.lora is not None else 8  # LoRA: no weight gradients of the base
        gain = passes / (passes - 2 * kept)
        mfu, what = mfu * gain, (f"{what}; x{gain:.2f}: {kept:.0%} of the layers skip the recompute "
                                 f"(recompute_layers {stage.recompute_layers}; arithmetic, not measured)")
    if gpus > 1:
        mfu, what = mfu * MULTI_GPU.value, f"{what}; x{MULTI_GPU.value} on {gpus} GPUs, {MULTI_GPU.source}"
    return mfu, f"MFU {mfu:.2f} ({what})"


def sft_speed(shape: Shape, stage, tokens: Tokens, gpus: int, nodes: int) -> tuple[float, str]:
    """Tokens a second a GPU of SFT on samples of tokens' lengths, and where the figure comes from: verl's FLOPs at
    the measured MFU, or FSDP's traffic when that takes longer."""
    mfu, why = sft_mfu(shape, stage, gpus)
    per_gpu = mfu * PEAK_FLOPS / flops_per_token(shape, tokens)
    step_tokens = stage.train_batch_size * tokens.mean
    per_micro = (stage.max_token_len_per_gpu * stage.sequence_parallel if stage.use_dynamic_bsz
                 else stage.micro_batch_size_per_gpu * tokens.mean)
    micro = math.ceil(step_tokens / gpus / per_micro)
    traffic = micro * fsdp_traffic_s(shape, stage, gpus, nodes)
    compute = step_tokens / (per_gpu * gpus)
    floor = SFT_STEP_FLOOR_S.value
    if traffic > max(compute, floor):
        return step_tokens / gpus / traffic, (
            f"bound by FSDP's traffic: {micro} micro-batch(es) a step x {traffic / micro:.1f} s of gathered weights "
            f"(network speed assumed, not measured); computing alone: {why}")
    if floor > compute:
        return step_tokens / gpus / floor, (f"bound by the trainer's fixed cost of {floor} s a step "
                                            f"({SFT_STEP_FLOOR_S.source})")
    return per_gpu, why


def grpo_step(shape: Shape, rl, prompt_tokens: float, gpus: int, nodes: int) -> tuple[float, float, float, str]:
    """Seconds of one GRPO step (generation, update) with every response max_response_length long (random weights
    and long reasoning do reach it; the step waits for its longest response), and where they come from."""
    responses = rl.train_batch_size * rl.rollout_n
    replicas = max(gpus // rl.rollout_tp, 1)
    per_replica = math.ceil(responses / replicas)
    waves = math.ceil(per_replica / VLLM_SEQS)
    prefill = per_replica * prompt_tokens * 2 * active_params(shape) / (rl.rollout_tp * PREFILL_MFU * PEAK_FLOPS)
    gen = waves * rl.max_response_length * decode_step_s(shape, rl.rollout_tp) + prefill
    length = prompt_tokens + rl.max_response_length
    sample = Tokens(1, length, length ** 2, "")
    mfu, why = sft_mfu(shape, rl, gpus)
    passes = 6 + (2 if rl.old_log_probs == "recompute" else 0) + (2 if rl.use_kl_loss else 0)
    update = responses * length * flops_per_token(shape, sample, passes) / (gpus * mfu * PEAK_FLOPS)
    per_micro = rl.ppo_max_token_len_per_gpu if rl.use_dynamic_bsz else rl.ppo_micro_batch_size_per_gpu * length
    update = max(update, math.ceil(responses * length / gpus / per_micro) * fsdp_traffic_s(shape, rl, gpus, nodes))
    extra = [name for name, on in (("recompute", rl.old_log_probs == "recompute"), ("reference", rl.use_kl_loss)) if on]
    why = (f"{rl.max_response_length} tokens x {waves} wave(s) of {min(per_replica, VLLM_SEQS)} responses a vLLM "
           f"replica ({DECODE_FIXED_S.source}); update {why}"
           + (f"; forward passes for {' and '.join(extra)}" if extra else "")
           + ("; vLLM's LoRA kernels not measured (generation taken as without LoRA)" if rl.lora else ""))
    return gen + update + GRPO_STEP_FIXED_S.value, gen, update, why


def decode_step_s(shape: Shape, tp: int) -> float:
    """One decode step of vLLM: its fixed cost and the bf16 weights a GPU holds, read once."""
    return DECODE_FIXED_S.value + active_params(shape) * 2 / tp / HBM_BYTES_PER_S


def fsdp_traffic_s(shape: Shape, stage, gpus: int, nodes: int) -> float:
    """Seconds a GPU spends receiving one micro-batch's FSDP traffic: the weights gathered twice in bf16 and, in
    full fine-tuning, the fp32 gradients reduce-scattered. Overlaps with compute; the step takes the longer."""
    if gpus == 1:
        return 0.0
    volume = 2 * shape.params * 2 + (0 if stage.lora is not None else shape.params * 4)
    speed = INTER_NODE_BYTES_PER_S if nodes > 1 else INTRA_NODE_BYTES_PER_S
    return volume * (gpus - 1) / gpus / speed


def _load_s(shape: Shape, stage) -> float:
    dtype_bytes = 4 if stage.lora is None or stage.lora.base_dtype == "fp32" else 2
    return shape.params * dtype_bytes / LOAD_BYTES_PER_S


def _save_s(shape: Shape, stage, nodes: int) -> float:
    """One checkpoint: fp32 weights and Adam's moments (12 bytes a parameter) spread over the nodes, or the adapter."""
    if stage.lora is not None and stage.lora.checkpoints == "adapter":
        return 5.0
    return shape.params * 12 / nodes / SAVE_BYTES_PER_S


def _jobs(config: TeamConfig, wall: float, start: float) -> tuple[int, float]:
    """Jobs a stage takes under slurm.time_limit (each saves before it and the next resumes), and its wall time
    with start-up paid again by each."""
    usable = config.slurm.time_limit_s - config.slurm.signal_before_limit_s - start
    if usable <= 0 or wall <= config.slurm.time_limit_s:
        return 1, wall
    jobs = math.ceil(wall / usable)
    return jobs, wall + (jobs - 1) * start


# -- a team's own run ----------------------------------------------------------------------------------------------

@dataclass
class Run:
    path: Path
    steps: list[dict]
    gpus: int | None
    model: str | None
    batch: int | None  # rows (SFT) or responses (GRPO: prompts x rollout.n) a step


def _resolved_config(metrics: Path) -> dict:
    """The run's Hydra config (paths.logs/hydra/<run>/.hydra/config.yaml, written beside the metrics)."""
    import yaml

    path = metrics.parent / "hydra" / metrics.name.removesuffix(".metrics.jsonl") / ".hydra" / "config.yaml"
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def metric_records(path: Path) -> list[dict]:
    """The records of a run's metrics file (verl's file logger: one JSON object a step), skipping a line still being
    written."""
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_run(path: Path, key: str) -> Run | None:
    """A finished or running run's steps that logged `key` (its first step, which warms up, left out)."""
    try:
        records = metric_records(path)
    except OSError:
        return None
    steps = [data for data in (r.get("data") or {} for r in records) if isinstance(data.get(key), (int, float))]
    if len(steps) < 2:
        return None
    resolved = _resolved_config(path)
    trainer = resolved.get("trainer", {})
    gpus = trainer.get("n_gpus_per_node", 0) * trainer.get("nnodes", 0) if trainer else None
    actor = resolved.get("actor_rollout_ref") or {}
    model = (resolved.get("model") or {}).get("path") or (actor.get("model") or {}).get("path")
    batch = (resolved.get("data") or {}).get("train_batch_size")
    if batch and actor:
        batch *= (actor.get("rollout") or {}).get("n") or 1
    return Run(path, steps[1:], gpus or None, model, batch)


def newest_run(config: TeamConfig, experiment: str, key: str, model: str) -> Run | None:
    """The newest run of `experiment` in paths.logs that trained `model` and logged `key`."""
    logs = local_path(config.paths.logs)
    # <experiment>-<job id>-<date>-<time> (templates/_run_files.sh.j2): not another experiment whose name starts so
    name = re.compile(re.escape(experiment) + r"-[A-Za-z0-9_]+-\d{8}-\d{6}\.metrics\.jsonl")
    runs = [p for p in logs.glob(f"{experiment}-*.metrics.jsonl") if name.fullmatch(p.name)]
    for path in sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True):
        run = read_run(path, key)
        if run and (run.model is None or local_path(run.model) == local_path(model) or run.model == model):
            return run
    return None


# -- the stages ----------------------------------------------------------------------------------------------------

def plan_sft(config: TeamConfig, shape: Shape | None, memory: str, run: Run | None) -> tuple[Line, list[str]]:
    sft, slurm = config.sft, config.slurm
    gpus = slurm.nodes * slurm.gpus_per_node
    tokens = count_tokens(sft.train_files, sft.messages_key, sft.model, config.paths.hf_home, sft.max_length)
    if tokens is None:
        return Line("sft", gpus, f"{sft.train_files} not readable here", None, "not planned", memory), []
    dp = gpus // sft.sequence_parallel
    per_epoch = (tokens.rows // dp) // max(sft.train_batch_size // dp, 1)
    steps = min(sft.total_training_steps or math.inf, per_epoch * sft.total_epochs)
    step_tokens = sft.train_batch_size * tokens.mean
    notes = [f"sft data: {sft.train_files}: {tokens.rows:,} rows, ~{tokens.mean:,.0f} tokens a row ({tokens.how})"]
    if run is not None:
        rate = sum(s["train/global_tokens"] for s in run.steps) / sum(s["timing_s/step"] for s in run.steps)
        per_gpu = rate / (run.gpus or gpus)
        basis = (f"measured: your run {run.path.name}, {per_gpu:,.0f} tokens/s a GPU over {len(run.steps)} steps"
                 + ("" if run.gpus else " (its GPU count unknown: taken as this layout's)"))
    elif shape is None:
        return Line("sft", gpus, f"{steps:,} steps", None, f"not planned: no config.json for {sft.model} here",
                    memory, steps=steps), notes
    else:
        per_gpu, why = sft_speed(shape, sft, tokens, gpus, slurm.nodes)
        basis = f"estimate: {per_gpu:,.0f} tokens/s a GPU, {why}"
    train = steps * step_tokens / (per_gpu * gpus)
    start = START_S + (_load_s(shape, sft) if shape else 0)
    saves = (steps // sft.save_freq + 1) * (_save_s(shape, sft, slurm.nodes) if shape else 0)
    jobs, wall = _jobs(config, start + train + saves, start)
    work = f"{steps:,} steps x {sft.train_batch_size} rows, {steps * step_tokens / 1e9:.2f}B tokens"
    return Line("sft", gpus, work, wall, basis, memory, jobs, steps), notes


def plan_grpo(config: TeamConfig, shape: Shape | None, memory: str, run: Run | None, tokenizer_model: str
              ) -> tuple[Line, list[str]]:
    rl, slurm = config.rl, config.slurm
    gpus = slurm.nodes * slurm.gpus_per_node
    prompts = count_tokens(rl.train_files, "prompt", tokenizer_model, config.paths.hf_home, rl.max_prompt_length)
    if prompts is None:
        return Line("grpo", gpus, f"{rl.train_files} not readable here", None, "not planned", memory), []
    steps = min(rl.total_training_steps or math.inf, (prompts.rows // rl.train_batch_size) * rl.total_epochs)
    notes = [f"grpo data: {rl.train_files}: {prompts.rows:,} prompts, ~{prompts.mean:,.0f} tokens a prompt "
             f"({prompts.how})"]
    if run is not None:
        step_s = statistics.median(s["timing_s/step"] for s in run.steps)
        basis = f"measured: your run {run.path.name}, median step {step_s:.1f} s over {len(run.steps)} steps"
        responses = rl.train_batch_size * rl.rollout_n
        if run.gpus and run.batch and (run.gpus, run.batch) != (gpus, responses):
            step_s *= responses / gpus / (run.batch / run.gpus)
            basis += f" of {run.batch} responses on {run.gpus} GPUs, scaled to {responses} on {gpus}"
    elif shape is None:
        return Line("grpo", gpus, f"{steps:,} steps", None, f"not planned: no config.json for {rl.model} here",
                    memory, steps=steps), notes
    else:
        step_s, gen, update, why = grpo_step(shape, rl, prompts.mean, gpus, slurm.nodes)
        basis = f"estimate: generation {gen:.0f} s + update {update:.0f} s a step; {why}"
    start = GRPO_START_S + (_load_s(shape, rl) if shape else 0)
    saves = (steps // rl.save_freq + 1) * (_save_s(shape, rl, slurm.nodes) if shape else 0)
    jobs, wall = _jobs(config, start + steps * step_s + saves, start)
    work = f"{steps:,} steps x {rl.train_batch_size} prompts x {rl.rollout_n}, responses <= {rl.max_response_length}"
    return Line("grpo", gpus, work, wall, basis, memory, jobs, steps), notes


def plan_merge(name: str, shape: Shape | None) -> Line:
    if shape is None:
        return Line(name, 0, "", None, "not planned: the model's size is unknown here")
    size = shape.params * 2
    wall = MERGE_START_S + 2 * size / MERGE_BYTES_PER_S
    return Line(name, 0, f"{size / 1e9:.0f} GB read and written", wall,
                f"estimate: {MERGE_BYTES_PER_S / 1e9:g} GB/s of disk (assumed), no GPU")


def _rows(path: str) -> int | None:
    p = local_path(path)
    if p.suffix == ".parquet":
        return _parquet_rows(p)
    try:
        with p.open() as f:
            return sum(1 for _ in f) - (1 if p.suffix == ".csv" else 0)
    except Exception:
        return None


def plan_eval(config: TeamConfig, shape: Shape | None, model: str) -> Line:
    ev = config.evaluation
    gpus = config.slurm.gpus_per_node  # the job holds a node; vLLM uses tensor_parallel_size of its GPUs
    hle, dna = _rows(ev.hle_questions), _rows(ev.dna_questions)
    context = ev.max_model_len or (find_config(model, config.paths.hf_home) or {}).get("max_position_embeddings", 32768)
    hle_len = context if ev.hle_max_response_length == "model" else ev.hle_max_response_length
    dna_len = {"model": context, "auto": 512}.get(ev.dna_max_response_length, ev.dna_max_response_length)
    counts = f"{hle if hle is not None else '~2,500'} HLE + {dna if dna is not None else 939} Do-Not-Answer questions"
    hle, dna = hle or 2500, dna or 939
    if shape is None:
        return Line("eval", gpus, counts, None, "not planned: the model's size is unknown here")
    step = decode_step_s(shape, ev.tensor_parallel_size)
    wall = 2 * VLLM_START_S + (math.ceil(hle / VLLM_SEQS) * hle_len + math.ceil(dna / VLLM_SEQS) * dna_len) * step
    return Line("eval", gpus, counts, wall, f"upper bound: every answer {hle_len} (HLE) / {dna_len} (DNA) tokens long, "
                "vLLM's decode as in GRPO; the judge's API time not included")


def plan_upload(shape: Shape | None) -> Line:
    if shape is None:
        return Line("upload", 0, "", None, "not planned: the model's size is unknown here")
    size = shape.params * 2
    return Line("upload", 0, f"{size / 1e9:.0f} GB", size / UPLOAD_BYTES_PER_S,
                f"estimate: {UPLOAD_BYTES_PER_S / 1e6:.0f} MB/s to the Hub (assumed), no GPU")


def _peak(rows, stage: str, layout: str, gpu_gib: float) -> str:
    """The memory plan's largest row of a stage on the layout the chain runs it (the rollout's row is per node)."""
    totals = [r.total for r in rows if r.stage.startswith(stage) and (r.layout == layout or r.stage == "rl rollout")]
    if not totals:
        return "-"
    return f"{max(totals):.1f} ({max(totals) / gpu_gib:.0%})"


def plan(config: TeamConfig, stages: list[str]) -> Bill:
    """The bill of a chain of `stages` (llm_bridge.login.chain.CHOICES) as `submit` would queue it; `config` as the
    chain runs it (chain.chain_config)."""
    from llm_bridge.login import memory_plan

    hf = config.paths.hf_home
    sft_shape = find_shape(config.sft.model, hf)
    chained = "sft" in stages and "grpo" in stages
    rl_model = config.sft.model if chained else config.rl.model  # the chain's GRPO trains SFT's merged model
    rl_shape = sft_shape if chained else find_shape(config.rl.model, hf)
    memory_config = config.model_copy(update={"rl": config.rl.model_copy(update={"model": rl_model})})
    rows = memory_plan.plan(memory_config).rows
    gpu = config.slurm.gpu_memory_gib
    layout = memory_plan._layouts(config)[-1][0]  # the largest: the one the chain's scripts run on
    lines, notes = [], []
    if "sft" in stages:
        run = newest_run(config, config.sft.experiment_name, "timing_s/step", config.sft.model)
        line, more = plan_sft(config, sft_shape, _peak(rows, "sft", layout, gpu), run)
        lines += [line, plan_merge("merge-sft", sft_shape)]
        notes += more
    if "grpo" in stages:
        # rl.model: in the chain's config (chain.chain_config) SFT's merged model, which the chain's GRPO trains
        run = newest_run(config, config.rl.experiment_name, "timing_s/step", config.rl.model)
        line, more = plan_grpo(config, rl_shape, _peak(rows, "rl", layout, gpu), run, rl_model)
        lines += [line, plan_merge("merge-grpo", rl_shape)]
        notes += more
    final = rl_shape if "grpo" in stages else sft_shape
    final_model = rl_model if "grpo" in stages else config.sft.model
    if "eval" in stages:
        lines.append(plan_eval(config, final, final_model))
    if "upload" in stages:
        lines.append(plan_upload(final))
    notes.append(f"peak GiB/GPU: the memory plan's largest row of the stage (llm-bridge check), of "
                 f"slurm.gpu_memory_gib {gpu:g}")
    notes.append("estimates: docs/benchmarks.md (所要時間の見積もり) has each figure's measurement; a finished run of "
                 "the same experiment in paths.logs replaces them")
    return Bill(lines, notes)
