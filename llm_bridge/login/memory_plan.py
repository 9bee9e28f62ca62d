"""Peak GPU memory per GPU and host memory per node of each stage, from the model's shape, before anything is queued.

The arithmetic (docs/benchmarks.md, "メモリの見積もり", has the measurements it was fitted to):
  weights and optimizer  full fine-tuning: fp32 weights, gradients and Adam's two moments, 16 bytes a parameter;
                         LoRA: the frozen base in base_dtype plus the adapter's 8 bytes a parameter (bf16: verl casts
                         it to the base's dtype) or 16 (fp32); both sharded over every GPU of the layout, and none of
                         it on the GPU with cpu_offload (FSDP2's offload policy keeps it in host memory)
  gathered               FSDP gathers one decoder layer at a time in bf16 and prefetches the next (an MoE layer holds
                         every expert), and the root unit (embeddings, output head) for the whole step
  activations            gradient checkpointing keeps each layer's input (layers x tokens x hidden x 2 bytes; in
                         host memory with activation_offload) plus one layer recomputed; without it every layer's
                         tensors (Shape.activation_elements x 2 bytes a token, times ACTIVATION_FIT); with
                         recompute_layers N, the first N layers' inputs and the other layers' tensors
  logits                 the output head's bf16 logits, and the recipe's chunked fp32 log-softmax (4,096 rows)
Tokens are a micro-batch's on one GPU: max_token_len_per_gpu (a sequence-parallel group packs that many per GPU).
Fitted on one H200 against torch's peak allocated memory: Qwen2.5-0.5B and 1.5B full fine-tuning, Qwen3-32B and
Qwen3-30B-A3B LoRA, each predicted within 6%.
"""

import math
from dataclasses import dataclass, field

from llm_bridge.login.config import RL, LoRA, Stage, TeamConfig, local_path
from llm_bridge.login.model_shape import Shape, find_shape
from llm_bridge.problems import Problem

GIB = 2**30
ACTIVATION_FIT = 0.83     # measured / Shape.activation_elements: 0.5B at 32,768 tokens and 1.5B at 16,384, no checkpointing
LOGPROB_CHUNK_ROWS = 4096  # llm_bridge.job.verl_patches.CHUNK: the fp32 log-softmax is computed this many rows at a time
CUDA_CONTEXT_GIB = 1.4     # the process's CUDA context, NCCL and allocator slack outside torch's allocated memory
HEADROOM = 0.10            # a plan above 90% of the GPU is a warning: fragmentation and longer batches than planned
# While vLLM generates (GRPO/PPO), fitted to nvidia-smi peaks: 0.5B on 1 GPU with an H100's 0.5 of vLLM pool measured
# 47.2-47.3 GiB (estimate 47.8) under the scripts' expandable segments, 1.5B 59.2 GiB (estimate 59.0).
VLLM_SAMPLER_GIB = 1.0          # vLLM's sampler outside its pool: 4 fp32 [256 sequences x 151,936] = 0.58, measured 0.4-0.8
BYTES_PER_RESIDENT_PARAM = 12   # fp32 weights + Adam's two moments stay on the GPU while vLLM generates
BYTES_PER_FP32_WEIGHT = 4       # the same before the first update: Adam's moments come with it
BYTES_PER_REF_PARAM = 4         # the reference model: verl 0.9.1 loads it in fp32 too (ref.fsdp_config.model_dtype)


@dataclass
class Row:
    stage: str
    layout: str
    parts: dict[str, float] = field(default_factory=dict)  # GiB per GPU

    @property
    def total(self) -> float:
        return sum(self.parts.values()) + CUDA_CONTEXT_GIB


@dataclass
class Plan:
    rows: list[Row]
    host: list[str]
    notes: list[str]
    problems: list[Problem]

    def table(self, gpu_gib: float) -> str:
        columns = ["weights+optimizer", "gathered", "activations", "logits", "vLLM"]
        lines = [f"Memory plan, GiB per GPU (estimates within 6% of measurements, docs/benchmarks.md; "
                 f"total includes {CUDA_CONTEXT_GIB} of CUDA context):",
                 f"  {'stage':<12} {'layout':<13}" + "".join(f"{c:>{len(c) + 2}}" for c in columns) + f"{'total':>8}"]
        for row in self.rows:
            cells = "".join(f"{row.parts[c]:>{len(c) + 2}.1f}" if c in row.parts else f"{'-':>{len(c) + 2}}"
                            for c in columns)
            lines.append(f"  {row.stage:<12} {row.layout:<13}{cells}{row.total:>8.1f}  "
                         f"({row.total / gpu_gib:.0%} of {gpu_gib:g})")
        lines += [f"  {line}" for line in self.host + self.notes]
        return "\n".join(lines)


def _layouts(config: TeamConfig) -> list[tuple[str, int, bool]]:
    """(label, GPUs, the team's largest layout): the single-node scripts, then the multi-node ones."""
    gpus, nodes = config.slurm.gpus_per_node, config.slurm.nodes
    layouts = [(f"1 node x {gpus}", gpus, nodes == 1)]
    if nodes > 1:
        layouts.append((f"{nodes} nodes x {gpus}", nodes * gpus, True))
    return layouts


def _state_bytes(shape: Shape, stage: Stage) -> float:
    if stage.lora is None:
        return 16.0 * shape.params
    base, adapter = (2.0, 8.0) if stage.lora.base_dtype == "bf16" else (4.0, 16.0)
    lora = shape.lora_params(stage.lora.rank, stage.lora.target_modules, stage.lora.target_parameters)
    return base * shape.params + adapter * lora


def training_parts(shape: Shape, stage: Stage, gpus: int, tokens: int) -> dict[str, float]:
    """GiB per GPU of one training step of `stage` sharded over `gpus`, `tokens` tokens per micro-batch per GPU."""
    states = 0.0 if stage.cpu_offload else _state_bytes(shape, stage) / gpus
    gathered = 0.0
    if gpus > 1 or stage.cpu_offload or stage.lora is None:
        gathered = 2 * (2 * shape.layer_params + shape.embedding_params)
    layer = ACTIVATION_FIT * tokens * shape.activation_elements() * 2
    if stage.activation_offload:  # what backward needs comes back one layer ahead
        activations = layer if stage.gradient_checkpointing else 2 * layer
    else:
        activations = _saved_activation_bytes(shape, stage, tokens) + (layer if stage.gradient_checkpointing else 0.0)
    logits = tokens * shape.vocab * 2 + min(tokens, LOGPROB_CHUNK_ROWS) * shape.vocab * 4
    return {"weights+optimizer": states / GIB, "gathered": gathered / GIB, "activations": activations / GIB,
            "logits": logits / GIB}


def _saved_activation_bytes(shape: Shape, stage: Stage, tokens: int) -> float:
    """What the forward pass keeps for the backward pass on one GPU: a checkpointed layer's input, every tensor of
    a layer that is not (activation_offload moves exactly this to host memory)."""
    recomputed = min(stage.recompute_layers or shape.layers, shape.layers) if stage.gradient_checkpointing else 0
    return (recomputed * tokens * shape.hidden * 2
            + (shape.layers - recomputed) * ACTIVATION_FIT * tokens * shape.activation_elements() * 2)


def _tokens(stage: Stage) -> int:
    if isinstance(stage, RL):
        return stage.ppo_max_token_len_per_gpu if stage.use_dynamic_bsz else (
            stage.ppo_micro_batch_size_per_gpu * (stage.max_prompt_length + stage.max_response_length))
    return stage.max_token_len_per_gpu if stage.use_dynamic_bsz else stage.micro_batch_size_per_gpu * stage.max_length


def _resident_bytes(shape: Shape, rl: RL, critic: Shape | None, updated: bool = True) -> dict[str, float]:
    """What the trainer keeps on the GPU while vLLM generates (its activations are gone); not `updated`: what it
    holds when vLLM starts beside it, before the first update gives Adam its moments."""
    if rl.lora:  # the frozen base; the reference policy is the actor with its adapter off, not a second model
        return {"actor": shape.params * (2 if rl.lora.base_dtype == "bf16" else 4)}
    per_param = BYTES_PER_RESIDENT_PARAM if updated else BYTES_PER_FP32_WEIGHT
    resident = {"actor": shape.params * per_param}
    if rl.use_kl_loss:
        resident["reference"] = shape.params * BYTES_PER_REF_PARAM
    if critic:
        resident["critic"] = critic.params * per_param
    return resident


def _fixes(config: TeamConfig, shape: Shape, stage: Stage, name: str, gpus: int) -> list[tuple[str, str]]:
    """Changes to `stage`, cheapest in speed first, that bring its estimate under the GPU's memory (and, for CPU
    offload, its host memory under slurm.host_memory_gib when that is set)."""
    limit = config.slurm.gpu_memory_gib
    tokens = _tokens(stage)
    candidates = []
    if not stage.gradient_checkpointing:
        candidates.append((f"{name}.gradient_checkpointing", f"{name}.gradient_checkpointing: true",
                           {"gradient_checkpointing": True}))
    elif stage.recompute_layers and stage.recompute_layers < shape.layers:
        fewest = fewest_recomputed_layers(shape, stage, gpus, (1 - HEADROOM) * limit)
        if fewest is not None:  # more layers recompute, fewer keep their activations
            candidates.append((f"{name}.recompute_layers", f"{name}.recompute_layers: {fewest}" if fewest < shape.layers
                               else f"no {name}.recompute_layers (every layer recomputes)", {"recompute_layers": fewest}))
    if stage.lora is None:
        candidates.append((f"{name}.lora", f"{name}.lora: {{rank: 32, alpha: 64}} (LoRA on a bf16 base)",
                           {"lora": {"rank": 32, "alpha": 64}, "gradient_checkpointing": True}))
    if not stage.cpu_offload:
        candidates.append((f"{name}.cpu_offload", f"{name}.cpu_offload: true and {name}.strategy: fsdp2 (slower: "
                           "weights and optimizer live in host memory)",
                           {"cpu_offload": True, "strategy": "fsdp2", "gradient_checkpointing": True}))
    fits = []
    for field_name, text, change in candidates:
        if "lora" in change:
            change = {**change, "lora": LoRA(**change["lora"])}
        changed = stage.model_copy(update=change)
        total = sum(training_parts(shape, changed, gpus, tokens).values()) + CUDA_CONTEXT_GIB
        host = host_gib(config, shape, changed)
        if total <= limit and host <= (config.slurm.host_memory_gib or math.inf):
            fits.append((field_name, f"set {text}: ~{total:.0f} GiB per GPU"
                         + (f", ~{host:.0f} GiB of host memory on the first node" if changed.cpu_offload else "")))
    return fits


def fewest_recomputed_layers(shape: Shape, stage: Stage, gpus: int, gpu_gib: float) -> int | None:
    """The smallest recompute_layers with which `stage` (checkpointing on) fits `gpu_gib` on each of `gpus` GPUs;
    None if even every layer recomputing does not fit."""
    tokens = _tokens(stage)
    for layers in range(1, shape.layers + 1):
        changed = stage.model_copy(update={"gradient_checkpointing": True, "recompute_layers": layers})
        if sum(training_parts(shape, changed, gpus, tokens).values()) + CUDA_CONTEXT_GIB <= gpu_gib:
            return layers
    return None


def _nodes_that_fit(config: TeamConfig, shape: Shape, stage: Stage) -> int | None:
    """The fewest nodes on which `stage`, as LoRA with checkpointing on a bf16 base, fits each GPU."""
    lean = stage.model_copy(update={"lora": stage.lora or LoRA(rank=32, alpha=64), "gradient_checkpointing": True})
    for nodes in range(config.slurm.nodes + 1, 257):
        gpus = nodes * config.slurm.gpus_per_node
        if sum(training_parts(shape, lean, gpus, _tokens(stage)).values()) + CUDA_CONTEXT_GIB <= config.slurm.gpu_memory_gib:
            return nodes
    return None


def _under(path: str, folder: str) -> bool:
    return local_path(path).is_relative_to(local_path(folder))


def plan(config: TeamConfig) -> Plan:
    gpu = config.slurm.gpu_memory_gib
    rows: list[Row] = []
    notes: list[str] = []
    host: list[str] = []
    problems: list[Problem] = []
    for name, stage in (("sft", config.sft), ("rl", config.rl)):
        shape = find_shape(stage.model, config.paths.hf_home)
        if shape is None and name == "rl" and _under(stage.model, config.paths.checkpoints):
            shape = find_shape(config.sft.model, config.paths.hf_home)  # the SFT run's merged output, not there yet
            if shape is not None:
                notes.append(f"rl: {stage.model} planned with sft.model's shape ({config.sft.model})")
        if shape is None:
            notes.append(f"{name}: {stage.model} is not planned (no config.json here or in paths.hf_home, and not a "
                         "model this recipe knows); download its config.json to plan it")
            continue
        if shape.published:
            notes.append(f"{name}: {stage.model} planned from its published config.json values (not downloaded here)")
        stage_rows = []
        for label, gpus, largest in _layouts(config):
            row = Row(f"{name} update" if name == "rl" else name, label, training_parts(shape, stage, gpus, _tokens(stage)))
            rows.append(row)
            stage_rows.append((row, gpus, largest))
        problems += _fit_problems(config, shape, stage, name, stage_rows)
        notes += _recompute_note(config, shape, stage, name, stage_rows)
        problems += _host(config, shape, stage, name, host)
        if name == "rl":
            problems += _rollout(config, shape, rows, gpu)
    return Plan(rows, host, notes, problems)


def _recompute_note(config: TeamConfig, shape: Shape, stage: Stage, name: str, stage_rows) -> list[str]:
    """With checkpointing on and GPU memory to spare on the job's layout: how many layers could keep their
    activations (recompute_layers), planned to stay within the headroom."""
    if not stage.gradient_checkpointing or stage.activation_offload:
        return []
    row, gpus, _ = next((r for r in stage_rows if r[2]), stage_rows[-1])
    room = (1 - HEADROOM) * config.slurm.gpu_memory_gib
    fewest = fewest_recomputed_layers(shape, stage, gpus, room)
    if fewest is None or fewest >= (stage.recompute_layers or shape.layers):
        return []
    return [f"{name}: {shape.layers - fewest} of {shape.layers} decoder layers could keep their activations within "
            f"{room:.0f} GiB per GPU on {row.layout} GPUs: {name}.recompute_layers: {fewest} skips their recompute in the "
            "backward (faster)"]


def _fit_problems(config: TeamConfig, shape: Shape, stage: Stage, name: str, stage_rows) -> list[Problem]:
    gpu = config.slurm.gpu_memory_gib
    problems = []
    for row, gpus, largest in stage_rows:
        what = (f"~{row.total:.0f} GiB per GPU on {row.layout} GPUs (weights and optimizer "
                f"{row.parts['weights+optimizer']:.0f}, gathered layers {row.parts['gathered']:.0f}, activations of "
                f"{_tokens(stage)} tokens {row.parts['activations']:.0f}, logits {row.parts['logits']:.0f})")
        if row.total > gpu and not largest:
            problems.append(Problem(
                f"{name}.model", f"the single-node {name} script would need {what}, more than slurm.gpu_memory_gib "
                f"{gpu:g}", "use the multi-node script for this model (README_multi_node_SFT_PPO.md)", "warning"))
        elif row.total > gpu:
            fixes = _fixes(config, shape, stage, name, gpus)
            if fixes:
                problems.append(Problem(fixes[0][0], f"{stage.model} needs {what}, more than slurm.gpu_memory_gib "
                                        f"{gpu:g}: the job would run out of GPU memory", "; or ".join(f for _, f in fixes)))
            else:
                nodes = _nodes_that_fit(config, shape, stage)
                problems.append(Problem(
                    f"{name}.model", f"{stage.model} cannot be trained on {row.layout} GPUs of {gpu:g} GiB with verl's "
                    f"FSDP engine: it needs {what}, and neither LoRA, checkpointing nor CPU offload (within the host "
                    f"memory) brings it under; FSDP gathers a whole {shape.layer_params * 2 / GIB:.0f} GiB decoder layer "
                    "on every GPU, twice in flight, and has no expert parallelism",
                    (f"it would fit as LoRA with checkpointing on {nodes} nodes (slurm.nodes: {nodes}); " if nodes else "")
                    + "otherwise a smaller model (Megatron's expert parallelism is not installable with verl 0.9.1)"))
        elif row.total > (1 - HEADROOM) * gpu:
            problems.append(Problem(
                f"{name}.model", f"{what} leaves less than {HEADROOM:.0%} of slurm.gpu_memory_gib {gpu:g}",
                f"lower the tokens per GPU, or set {name}.gradient_checkpointing: true, if it runs out of memory",
                "warning"))
    return problems


def host_parts(config: TeamConfig, shape: Shape, stage: Stage) -> dict[str, float]:
    """GiB of host memory on the first node: rank 0 loads the whole model (verl's FSDP engine: the other ranks start
    empty and receive their shards), cpu_offload keeps the node's share of weights and optimizer there, and
    activation_offload the saved activations of each of the node's GPUs."""
    load = shape.params * (4 if stage.lora is None or stage.lora.base_dtype == "fp32" else 2)
    states = _state_bytes(shape, stage) / config.slurm.nodes if stage.cpu_offload else 0.0
    activations = (config.slurm.gpus_per_node * _saved_activation_bytes(shape, stage, _tokens(stage))
                   if stage.activation_offload else 0.0)
    return {"model load": load / GIB, "offloaded states": states / GIB, "offloaded activations": activations / GIB}


def host_gib(config: TeamConfig, shape: Shape, stage: Stage) -> float:
    return sum(host_parts(config, shape, stage).values())


def _host(config: TeamConfig, shape: Shape, stage: Stage, name: str, host: list[str]) -> list[Problem]:
    parts = host_parts(config, shape, stage)
    need, limit = sum(parts.values()), config.slurm.host_memory_gib
    dtype = "fp32" if stage.lora is None or stage.lora.base_dtype == "fp32" else "bf16"
    detail = f"rank 0 loads {stage.model} in {dtype}: {parts['model load']:.0f}" + "".join(
        f", {what} {gib:.0f}" for what, gib in parts.items() if what != "model load" and gib)
    host.append(f"{name}: host memory of the first node ~{need:.0f} GiB ({detail}"
                + (f"; of slurm.host_memory_gib {limit}" if limit else "; set slurm.host_memory_gib to check it") + ")")
    if not limit or need <= limit:
        return []
    if parts["offloaded activations"] > parts["model load"]:
        fix = f"set {name}.gradient_checkpointing: true (only each layer's input is offloaded), or lower the tokens per GPU"
    elif dtype == "fp32":
        fix = "use LoRA with a bf16 base (sft.lora / rl.lora) to halve the load, nodes with more memory, or a smaller model"
    else:
        fix = "nodes with more memory or a smaller model: verl's FSDP engine loads the whole model on rank 0"
    return [Problem(f"{name}.model", f"the first node needs ~{need:.0f} GiB of host memory ({detail}), more than "
                    f"slurm.host_memory_gib {limit}", fix)]


def _rollout(config: TeamConfig, shape: Shape, rows: list[Row], gpu: float) -> list[Problem]:
    """vLLM's pool, its sampler's workspace and the resident FSDP models share each GPU while generating; the
    smallest layout (one node) shards the models least."""
    rl = config.rl
    gpus = config.slurm.gpus_per_node
    critic = (find_shape(rl.critic_model or rl.model, config.paths.hf_home) or shape) if rl.algorithm == "ppo" else None
    resident = {k: v / gpus / GIB for k, v in _resident_bytes(shape, rl, critic).items()}
    pool = rl.gpu_memory_utilization * gpu
    row = Row("rl rollout", f"1 node x {gpus}", {"weights+optimizer": sum(resident.values()),
                                                 "vLLM": pool + VLLM_SAMPLER_GIB})
    rows.append(row)
    problems = []
    weights = shape.params * 2 / rl.rollout_tp / GIB
    if weights > 0.9 * pool:
        least = next((tp for tp in (2, 4, 8, 16) if tp > rl.rollout_tp and gpus % tp == 0
                      and shape.params * 2 / tp / GIB <= 0.6 * pool), None)
        problems.append(Problem(
            "rl.rollout_tp", f"vLLM holds {weights:.0f} GiB of bf16 weights per GPU with tensor parallel "
            f"{rl.rollout_tp}, and its pool (gpu_memory_utilization {rl.gpu_memory_utilization} x {gpu:g} GiB = "
            f"{pool:.0f} GiB) leaves no room for the KV cache",
            f"set rl.rollout_tp: {least}" if least else "raise rl.gpu_memory_utilization, or use a smaller model"))
    limit = (1 - HEADROOM) * gpu
    if row.total > limit:
        split = " + ".join(f"{k} {v:.1f}" for k, v in resident.items())
        most = math.floor((limit - VLLM_SAMPLER_GIB - CUDA_CONTEXT_GIB - sum(resident.values())) / gpu * 100) / 100
        fix = (f"set rl.gpu_memory_utilization: {most} or lower (0.5B on one GPU: 0.5 of an H100 peaked at 47 GiB)"
               if most >= 0.2 else "shard the models over more GPUs (slurm.gpus_per_node), or use LoRA (rl.lora)")
        workers = row.total - pool - VLLM_SAMPLER_GIB
        at_start = sum(_resident_bytes(shape, rl, critic, updated=False).values()) / gpus / GIB + CUDA_CONTEXT_GIB
        if pool + at_start > gpu:
            # vLLM starts after the FSDP workers and asks for its share of the whole GPU from what they left free
            # (Qwen3-8B with an fp32 LoRA base on one H100: 46.65 GiB free, 0.6 asked 47.51, and it did not start)
            problems.append(Problem(
                "rl.gpu_memory_utilization",
                f"vLLM will not start: it asks for gpu_memory_utilization {rl.gpu_memory_utilization} x {gpu:g} GiB = "
                f"{pool:.1f} GiB, but the FSDP workers it starts beside already hold ~{at_start:.1f} GiB per GPU (their "
                f"weights over {gpus} GPU(s) and ~{CUDA_CONTEXT_GIB} GiB CUDA context), leaving ~{gpu - at_start:.1f} GiB "
                "(vLLM: 'Free memory on device ... is less than desired GPU memory utilization')", fix))
            return problems
        problems.append(Problem(
            "rl.gpu_memory_utilization",
            f"{rl.gpu_memory_utilization} gives vLLM {pool:.1f} GiB, its sampler takes ~{VLLM_SAMPLER_GIB} GiB more "
            f"while generating (with the scripts' expandable segments), and the FSDP workers keep "
            f"{workers:.1f} GiB per GPU ({split} GiB of weights and optimizer state over "
            f"{gpus} GPU(s), ~{CUDA_CONTEXT_GIB} GiB CUDA context): about {row.total:.0f} GiB per GPU, less than "
            f"{HEADROOM:.0%} headroom of slurm.gpu_memory_gib {gpu:g}, so a rollout can run out of memory mid-run",
            fix, "warning"))
    return problems
