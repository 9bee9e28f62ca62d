"""Rules that relate several fields of a valid TeamConfig.

verl 0.9.1's batch arithmetic is checked here twice over: the rules verl itself validates at start-up
(`verl/utils/config.py::validate_config`, `ActorConfig.validate`) and the ones it only meets at run time,
after the job has waited in the queue and loaded the model:
  - SFT: per-rank batch = train_batch_size // dp, silently dropping the remainder (`sft_trainer.py:241`);
    micro-batching asserts the per-rank batch divides by micro_batch_size_per_gpu (`engine/utils.py`);
    dynamic batching asserts max_token_len_per_gpu >= the longest sample (`seqlen_balancing.py`).
  - RL: `train_mini_batch` asserts (ppo_mini_batch_size * n) % dp == 0 (`engine_workers.py:266`); the
    rollout asserts world_size % TP == 0 (`engine_workers.py:655`).
Each rule runs for every layout the recipe renders: one node (single-node scripts) and all nodes (multi-node).
"""

import math
from collections import Counter
from pathlib import Path

from llm_bridge.login import hostlist
from llm_bridge.login.config import RL, TeamConfig, local_path
from llm_bridge.job.doctor import wandb_logged_in
from llm_bridge.login.memory_plan import plan
from llm_bridge.login.model_shape import (LAYERED_SUMMON_BILLIONS, check_model_shapes, check_sft_chat_template, find_file,
                                          layered_summon)
from llm_bridge.problems import Problem


def _layouts(config: TeamConfig) -> list[tuple[str, int]]:
    gpus = config.slurm.gpus_per_node
    layouts = [(f"1 node x {gpus} GPUs (single-node scripts)", gpus)]
    if config.slurm.nodes > 1:
        layouts.append((f"{config.slurm.nodes} nodes x {gpus} GPUs (multi-node scripts)", config.slurm.nodes * gpus))
    return layouts


def _multiple_near(value: int, step: int) -> str:
    low = (value // step) * step
    options = [v for v in (low, low + step) if v > 0]
    return " or ".join(str(v) for v in options)


def check_slurm(config: TeamConfig) -> list[Problem]:
    slurm = config.slurm
    problems: list[Problem] = []
    if slurm.nodelist is not None:
        try:
            hosts = hostlist.expand(slurm.nodelist)
        except ValueError as exc:
            return [Problem("slurm.nodelist", f"not a SLURM hostlist: {exc}", "write e.g. osk-gpu[51-53] or osk-gpu51,osk-gpu52")]
        shown = ", ".join(hosts[:8]) + (f", ... ({len(hosts)} in all)" if len(hosts) > 8 else "")
        if len(set(hosts)) != len(hosts):
            twice = sorted(h for h, n in Counter(hosts).items() if n > 1)
            problems.append(Problem("slurm.nodelist", f"names a node twice: {', '.join(twice[:8])}", "list each node once"))
        elif len(hosts) != slurm.nodes:
            problems.append(Problem(
                "slurm.nodelist",
                f"names {len(hosts)} node(s) ({shown}) but slurm.nodes is {slurm.nodes}",
                f"list {slurm.nodes} nodes, or set slurm.nodes: {len(hosts)}",
            ))
    if slurm.signal_before_limit_s >= slurm.time_limit_s:
        problems.append(Problem(
            "slurm.signal_before_limit_s",
            f"{slurm.signal_before_limit_s} s is not less than slurm.time_limit {slurm.time_limit} ({slurm.time_limit_s} s); "
            "the job would requeue itself at once",
            "lower it, or raise slurm.time_limit",
        ))
    needed = 3 * slurm.gpus_per_node + 20
    if slurm.cpus_per_task < needed:
        problems.append(Problem(
            "slurm.cpus_per_task",
            f"{slurm.cpus_per_task} CPUs: Ray reserves 3 per GPU bundle plus ~20 for verl's helper actors; "
            "too few and the placement group waits forever",
            f"set it to at least {needed}", "warning",
        ))
    return problems


_NODE_LOCAL = ("/tmp", "/var/tmp", "/dev/shm", "/run")


def check_evaluation(config: TeamConfig) -> list[Problem]:
    tp, gpus = config.evaluation.tensor_parallel_size, config.slurm.gpus_per_node
    if tp > gpus:
        return [Problem("evaluation.tensor_parallel_size", f"{tp} GPUs for one vLLM engine, but a node has {gpus}",
                        f"use at most {gpus}")]
    return []


def check_shared_paths(config: TeamConfig) -> list[Problem]:
    """Multi-node jobs, requeued jobs and the next stage all read these: node-local places lose them."""
    problems = []
    for name, path in config.paths:
        if any(path == p or path.startswith(p + "/") for p in _NODE_LOCAL):
            problems.append(Problem(
                f"paths.{name}", f"{path} is node-local: other nodes and later jobs will not see it",
                "put it on the shared home or the team's shared directory", "warning",
            ))
    return problems


def check_sft(config: TeamConfig) -> list[Problem]:
    sft = config.sft
    problems: list[Problem] = []
    for layout, dp in _layouts(config):
        if sft.train_batch_size % dp:
            problems.append(Problem(
                "sft.train_batch_size",
                f"{sft.train_batch_size} does not divide by {dp} data-parallel ranks on {layout}; verl would "
                f"silently train on {sft.train_batch_size // dp * dp} samples per step",
                f"use a multiple of {dp}, e.g. {_multiple_near(sft.train_batch_size, dp)}",
            ))
            continue
        per_rank = sft.train_batch_size // dp
        if not sft.use_dynamic_bsz and per_rank % sft.micro_batch_size_per_gpu:
            problems.append(Problem(
                "sft.micro_batch_size_per_gpu",
                f"{sft.micro_batch_size_per_gpu} does not divide the per-GPU batch {per_rank} "
                f"(train_batch_size {sft.train_batch_size} / {dp}) on {layout}; verl fails at the first step",
                f"use a divisor of {per_rank}, or sft.use_dynamic_bsz: true",
            ))
    # A packed micro-batch holds max_token_len_per_gpu x sequence_parallel tokens (verl's engine/utils.py).
    if sft.use_dynamic_bsz and sft.max_token_len_per_gpu * sft.sequence_parallel < sft.max_length:
        sp = f" x sft.sequence_parallel {sft.sequence_parallel}" if sft.sequence_parallel > 1 else ""
        problems.append(Problem(
            "sft.max_token_len_per_gpu",
            f"{sft.max_token_len_per_gpu}{sp} is below sft.max_length {sft.max_length}; verl asserts on the first long sample",
            f"set it to at least {-(-sft.max_length // sft.sequence_parallel)}",
        ))
    return problems


def check_big_model_settings(config: TeamConfig) -> list[Problem]:
    """sequence_parallel, cpu_offload and recompute_layers against the layout and the engine (both stages)."""
    problems: list[Problem] = []
    gpus = config.slurm.gpus_per_node
    for name, stage in (("sft", config.sft), ("rl", config.rl)):
        if gpus % stage.sequence_parallel:
            problems.append(Problem(
                f"{name}.sequence_parallel", f"{stage.sequence_parallel} does not divide the {gpus} GPUs of a node; "
                "a sequence-parallel group must lie within the GPUs of every layout",
                f"use a divisor of {gpus}, e.g. {', '.join(str(d) for d in range(2, gpus + 1) if gpus % d == 0)}"))
        if name == "rl" and stage.lora and stage.lora.target_parameters:
            problems.append(Problem(
                "rl.lora.target_parameters", "expert adapters are for SFT: verl hands the GRPO rollout's vLLM the "
                "adapter as LoRA on modules, and an adapter on 3-D expert parameters has not been run that way",
                "remove rl.lora.target_parameters (adapt attention in GRPO), or merge the SFT run first and train from it"))
        if stage.sequence_parallel > 1 and stage.attn_implementation != "flash_attention_2":
            problems.append(Problem(
                f"{name}.sequence_parallel", f"verl 0.9.1 splits the attention heads over the sequence-parallel GPUs "
                f"only inside its flash-attention forward; with attn_implementation {stage.attn_implementation} each "
                "GPU would attend within its own slice of the sequence and train on wrong attention, silently",
                f"set {name}.attn_implementation: flash_attention_2 (flash-attn is installed by install_env.sbatch), "
                f"or {name}.sequence_parallel: 1"))
        if name == "rl" and stage.strategy == "fsdp" and layered_summon(config):
            problems.append(Problem(
                "rl.strategy", f"fsdp with rl.lora on a model of {LAYERED_SUMMON_BILLIONS}B or more: verl's FSDP1 keeps "
                "each LoRA matrix in an FSDP unit of its own, so its layer-by-layer adapter sync finds no adapter and "
                "falls back to gathering the whole model into every rank's host memory at every step (checked on CPU); "
                "FSDP2 syncs only the adapter",
                "set rl.strategy: fsdp2"))
        if stage.recompute_layers and not stage.gradient_checkpointing:
            problems.append(Problem(
                f"{name}.recompute_layers", "chooses which layers gradient checkpointing recomputes, and "
                f"{name}.gradient_checkpointing is false: no layer would recompute and every layer's activations stay",
                f"set {name}.gradient_checkpointing: true, or remove {name}.recompute_layers"))
        if stage.recompute_layers and stage.activation_offload:
            problems.append(Problem(
                f"{name}.recompute_layers", "and activation_offload both decide where a layer's activations wait for "
                "the backward pass; verl's offload expects every layer checkpointed, and the two together are not planned",
                f"remove {name}.recompute_layers, or set {name}.activation_offload: false"))
        if stage.cpu_offload and stage.strategy != "fsdp2":
            problems.append(Problem(
                f"{name}.cpu_offload", "verl 0.9.1 applies its CPU offload policy to FSDP2 only; with strategy fsdp "
                "nothing would be offloaded and the job would run out of GPU memory as before",
                f"set {name}.strategy: fsdp2"))
    return problems


def check_rl(config: TeamConfig) -> list[Problem]:
    rl = config.rl
    n = rl.rollout_n
    gpus = config.slurm.gpus_per_node
    problems: list[Problem] = []
    if rl.algorithm == "grpo" and n < 2:
        problems.append(Problem("rl.rollout_n", "GRPO compares responses within a group; with n=1 every advantage is 0",
                                "set rl.rollout_n to 4-16 (or rl.algorithm: ppo)"))
    if rl.algorithm == "grpo" and rl.critic_model is not None:
        problems.append(Problem("rl.critic_model", "GRPO has no critic; this value is ignored",
                                "remove it, or set rl.algorithm: ppo", "warning"))
    if gpus % rl.rollout_tp:
        divisors = [d for d in range(1, gpus + 1) if gpus % d == 0]
        problems.append(Problem(
            "rl.rollout_tp",
            f"tensor parallel size {rl.rollout_tp} does not divide the {gpus} GPUs of a node; vLLM replicas cannot be laid out",
            f"use one of {', '.join(map(str, divisors))}",
        ))
    if rl.ppo_mini_batch_size > rl.train_batch_size:
        problems.append(Problem(
            "rl.ppo_mini_batch_size",
            f"{rl.ppo_mini_batch_size} is larger than rl.train_batch_size {rl.train_batch_size}",
            f"set it to {rl.train_batch_size} or a divisor of it",
        ))
    elif rl.train_batch_size % rl.ppo_mini_batch_size:
        problems.append(Problem(
            "rl.ppo_mini_batch_size",
            f"{rl.ppo_mini_batch_size} does not divide rl.train_batch_size {rl.train_batch_size}; verl pads every "
            "batch with dummy sequences up to a multiple",
            "use a divisor of rl.train_batch_size", "warning",
        ))
    for layout, dp in _layouts(config):
        if not rl.use_dynamic_bsz and (rl.train_batch_size * n) % dp:
            step = dp // math.gcd(dp, n)
            problems.append(Problem(
                "rl.train_batch_size",
                f"train_batch_size x rollout_n = {rl.train_batch_size} x {n} = {rl.train_batch_size * n} "
                f"does not divide by {dp} GPUs on {layout}; verl refuses to start",
                f"use a multiple of {step}, e.g. {_multiple_near(rl.train_batch_size, step)}",
            ))
        if (rl.ppo_mini_batch_size * n) % dp:
            step = dp // math.gcd(dp, n)
            problems.append(Problem(
                "rl.ppo_mini_batch_size",
                f"ppo_mini_batch_size x rollout_n = {rl.ppo_mini_batch_size} x {n} = {rl.ppo_mini_batch_size * n} "
                f"does not divide by {dp} GPUs on {layout}; verl fails at the first update, after the first rollout",
                f"use a multiple of {step}, e.g. {_multiple_near(rl.ppo_mini_batch_size, step)}",
            ))
            continue
        if not rl.use_dynamic_bsz:
            per_rank_mini = rl.ppo_mini_batch_size * n // dp
            if per_rank_mini % rl.ppo_micro_batch_size_per_gpu:
                problems.append(Problem(
                    "rl.ppo_micro_batch_size_per_gpu",
                    f"{rl.ppo_micro_batch_size_per_gpu} does not divide the per-GPU mini-batch {per_rank_mini} on {layout}",
                    f"use a divisor of {per_rank_mini}, or rl.use_dynamic_bsz: true",
                ))
            if rl.train_batch_size % rl.ppo_mini_batch_size == 0 and (rl.train_batch_size * n) % dp == 0:
                per_rank = rl.train_batch_size * n // dp
                if per_rank % rl.log_prob_micro_batch_size_per_gpu:
                    problems.append(Problem(
                        "rl.log_prob_micro_batch_size_per_gpu",
                        f"{rl.log_prob_micro_batch_size_per_gpu} does not divide the per-GPU batch {per_rank} on {layout}",
                        f"use a divisor of {per_rank}, or rl.use_dynamic_bsz: true",
                    ))
    problems += _check_rollout_correction(rl)
    longest = rl.max_prompt_length + rl.max_response_length
    if rl.use_dynamic_bsz and rl.ppo_max_token_len_per_gpu * rl.sequence_parallel < longest:
        sp = f" x rl.sequence_parallel {rl.sequence_parallel}" if rl.sequence_parallel > 1 else ""
        least = -(-longest // rl.sequence_parallel)
        problems.append(Problem(
            "rl.ppo_max_token_len_per_gpu",
            f"{rl.ppo_max_token_len_per_gpu}{sp} is below max_prompt_length + max_response_length = {longest}; "
            "verl asserts on the first full-length response",
            f"set it to at least {least} (verl's docs suggest 2x: {2 * least})",
        ))
    return problems


def _check_rollout_correction(rl: RL) -> list[Problem]:
    correction = rl.rollout_correction
    if correction is None:
        return []
    field = "rl.rollout_correction"
    if correction.rollout_is is None and correction.rollout_rs is None:
        return [Problem(field, "sets neither rollout_is nor rollout_rs, so it corrects nothing",
                        "set one of them, or remove the section (the drift is logged either way)", "warning")]
    problems = []
    if correction.rollout_is and rl.old_log_probs == "rollout":
        problems.append(Problem(
            f"{field}.rollout_is",
            "with rl.old_log_probs: rollout PPO's ratio already is pi_actor / pi_rollout; verl's bypass-mode loss "
            "(PPO-clip) applies no importance weights, so this would change nothing",
            "remove rollout_is (rollout_rs works in this mode), or set rl.old_log_probs: recompute"))
    if correction.rollout_rs and correction.rollout_rs_threshold is None:
        example = "1.001 (ratios within [0.999, 1.001])" if correction.rollout_rs.endswith("k1") else "0.01"
        problems.append(Problem(
            f"{field}.rollout_rs_threshold",
            f"rollout_rs {correction.rollout_rs} needs a threshold; verl stops at the first update without one",
            f"set rollout_rs_threshold, e.g. {example} as in verl's presets"))
    elif correction.rollout_rs and correction.rollout_rs.endswith("k1") and correction.rollout_rs_threshold <= 1:
        problems.append(Problem(
            f"{field}.rollout_rs_threshold",
            f"{correction.rollout_rs} keeps ratios within [1/t, t]; t = {correction.rollout_rs_threshold} is not above 1, "
            "so that range is empty and verl refuses it",
            "use a bound above 1, e.g. 1.001 (verl's preset)"))
    return problems


def check_local_paths(config: TeamConfig) -> list[Problem]:
    """Paths missing on this machine: the logs folder is an error, the rest warnings (data and models come later).
    Off the cluster (no conda.sh), say so once instead."""
    env = config.environment
    if not local_path(env.activate_script).exists():
        field = "environment.conda_sh" if env.venv is None else "environment.venv"
        return [Problem(
            field,
            f"{env.activate_script} does not exist here, so this is not the cluster's login node; other path checks skipped",
            "run `llm-bridge check` on the login node to check paths too", "warning",
        )]
    candidates = {
        "environment.conda_env": env.conda_env,
        "environment.module_init": env.module_init,
        "paths.logs": config.paths.logs,
        "sft.train_files": config.sft.train_files,
        "sft.val_files": config.sft.val_files,
        "rl.train_files": config.rl.train_files,
        "rl.val_files": config.rl.val_files,
        "rl.reward_function": config.rl.reward_function,
    }
    for field, model in (("sft.model", config.sft.model), ("rl.model", config.rl.model)):
        if model.startswith(("/", "${HOME}")):
            candidates[field] = model
    problems = []
    for field, path in candidates.items():
        if path is not None and not local_path(path).exists():
            if field == "paths.logs":  # SLURM opens --output before the script runs: no folder, no log, no job
                problems.append(Problem(field, f"{path} does not exist: SLURM cannot open the job logs there and "
                                        "the job fails before it prints anything", f"mkdir -p {path}"))
            else:
                problems.append(Problem(field, f"{path} does not exist yet",
                                        "create it first (data prep, SFT merge) or fix the path", "warning"))
    return problems


def _parquet_rows(path: Path) -> int | None:
    try:
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    except Exception:  # missing, a directory, another format: check_local_paths or verl will say
        return None


def check_sft_val_rows(config: TeamConfig) -> list[Problem]:
    """verl's SFT validates in batches of train_batch_size / GPUs per rank and drops incomplete ones
    (`sft_trainer.py`, drop_last=True). With fewer rows than train_batch_size (which check_sft makes divide
    by every layout's GPUs) it validates nothing and logs val/loss nan, after the job has queued and trained."""
    sft = config.sft
    rows = _parquet_rows(local_path(sft.val_files)) if sft.val_files else None
    if rows is None or rows >= sft.train_batch_size:
        return []
    layout, dp = _layouts(config)[0]
    return [Problem(
        "sft.val_files",
        f"{sft.val_files} has {rows} rows: {rows // dp} per GPU on {layout}, less than one validation batch "
        f"of {sft.train_batch_size // dp} (train_batch_size {sft.train_batch_size} / {dp}); verl would validate "
        f"nothing and log val/loss nan",
        f"use at least {sft.train_batch_size} validation rows, or lower sft.train_batch_size, or leave sft.val_files out",
    )]


LONGEST_SAMPLES = 256  # the longest rows by characters are tokenized: enough to count what max_length cuts
TOKENS_PER_MESSAGE = 5  # the chat template's markers around each message: Qwen's <|im_start|>role\n ... <|im_end|>\n


def conversation(messages: list[dict] | None) -> tuple[str, int]:
    """A chat row as (its text, its number of messages): what the tokenizer counts and the template's share."""
    messages = messages or []
    return "\n".join(str(m.get("content") or "") + str(m.get("reasoning_content") or "") for m in messages), len(messages)


def token_counts(model: str, hf_home: str | None, conversations: list[tuple[str, int]]) -> list[int] | None:
    """Tokens of each conversation, counted with the model's own tokenizer (tokenizer.json in the model's directory
    or hf_home, read by the `tokenizers` library) plus the template's markers; None without a tokenizer here."""
    tokenizer_file = find_file(model, hf_home, "tokenizer.json")
    if tokenizer_file is None:
        return None
    try:
        from tokenizers import Tokenizer

        encoded = Tokenizer.from_file(str(tokenizer_file)).encode_batch([text for text, _ in conversations])
    except Exception:
        return None
    return [len(e.ids) + TOKENS_PER_MESSAGE * messages for e, (_, messages) in zip(encoded, conversations)]


def _longest_conversations(path: Path, key: str) -> tuple[int, list[tuple[str, int]]] | None:
    """(rows, (text, messages) of the LONGEST_SAMPLES longest conversations), or None without pyarrow or a readable
    file."""
    try:
        import pyarrow.parquet as pq

        column = pq.read_table(path, columns=[key]).column(key).to_pylist()
    except Exception:  # no pyarrow on this Python (the login .venv), a missing file or column: said elsewhere
        return None
    texts = [conversation(row) for row in column]
    return len(texts), sorted(texts, key=lambda t: len(t[0]), reverse=True)[:LONGEST_SAMPLES]


def check_sft_lengths(config: TeamConfig) -> list[Problem]:
    """Samples longer than sft.max_length, counted with the model's own tokenizer (tokenizer.json in the model's
    directory or paths.hf_home, read by the `tokenizers` library of the training environment). verl's truncation
    `error` stops the job at the first one, mid-epoch; `right` cuts a reasoning trace's end, its answer."""
    sft = config.sft
    tokenizer_file = find_file(sft.model, config.paths.hf_home, "tokenizer.json")
    longest = _longest_conversations(local_path(sft.train_files), sft.messages_key) if tokenizer_file else None
    if longest is None:
        return []
    rows, texts = longest
    lengths = token_counts(sft.model, config.paths.hf_home, texts)
    if lengths is None:
        return []
    over = sum(n > sft.max_length for n in lengths)
    if not over:
        return []
    count = f"at least {over}" if over == len(texts) else f"{over}"
    what = (f"{count} of {rows} samples in {sft.train_files} are longer than sft.max_length {sft.max_length} tokens "
            f"(the longest ~{max(lengths)}, counted with {sft.model}'s tokenizer)")
    longest_fix = f"set sft.max_length: {-(-max(lengths) // 1024) * 1024}"
    if sft.truncation == "error":
        return [Problem("sft.max_length", f"{what}; with truncation error verl stops at the first of them, mid-run",
                        f"{longest_fix} (and max_token_len_per_gpu x sequence_parallel at least that), or filter them out")]
    return [Problem("sft.max_length", f"{what}; truncation {sft.truncation} cuts them, and a reasoning sample's "
                    "cut end is its answer", f"{longest_fix} (and max_token_len_per_gpu x sequence_parallel at least "
                    "that), or filter the long samples out in data prep", "warning")]


def check_accounts(config: TeamConfig) -> list[Problem]:
    problems = []
    if config.wandb.mode == "online" and not wandb_logged_in():
        problems.append(Problem(
            "wandb.mode", "online, but no W&B login found (no WANDB_API_KEY, no api.wandb.ai in ~/.netrc)",
            "run `wandb login` once on the login node, or set wandb.mode: offline", "warning",
        ))
    if config.huggingface.offline:
        for field, model in (("sft.model", config.sft.model), ("rl.model", config.rl.model)):
            if not model.startswith(("/", "${HOME}")):
                problems.append(Problem(
                    field, f"huggingface.offline is true and {model} is a Hub id: it must already be in paths.hf_home",
                    f"download it on the login node first: HF_HOME={config.paths.hf_home} hf download {model}",
                    "warning",
                ))
    return problems


def check(config: TeamConfig, local_paths: bool = True) -> list[Problem]:
    problems = (check_slurm(config) + check_shared_paths(config) + check_sft(config) + check_rl(config)
                + check_big_model_settings(config) + plan(config).problems
                + check_evaluation(config))
    if local_paths:
        problems += (check_local_paths(config) + check_sft_val_rows(config) + check_accounts(config)
                     + check_model_shapes(config) + check_sft_chat_template(config) + check_sft_lengths(config))
    return problems
