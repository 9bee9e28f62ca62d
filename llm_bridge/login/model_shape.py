"""Rules that need the model's own shape: its config.json, read on the login node from a model directory or the
team's Hugging Face cache (paths.hf_home), never downloaded. A model not there yet is a warning, not a guess."""

import json
from pathlib import Path

from llm_bridge.login.config import TeamConfig
from llm_bridge.problems import Problem

MOE_KEYS = ("num_experts", "n_routed_experts", "num_local_experts")  # Qwen3-MoE, DeepSeek, Mixtral


def _expand(path: str) -> Path:
    return Path(path.replace("${HOME}", str(Path.home()), 1)).expanduser()


def find_config(model: str, hf_home: str) -> dict | None:
    """config.json of a model directory, or of a Hub id's snapshot in <hf_home>/hub (the revision refs/main names)."""
    path = _expand(model)
    if path.is_absolute():
        candidates = [path / "config.json"]
    else:
        repo = _expand(hf_home) / "hub" / ("models--" + model.replace("/", "--"))
        ref = repo / "refs" / "main"
        revision = ref.read_text().strip() if ref.is_file() else None
        candidates = ([repo / "snapshots" / revision / "config.json"] if revision else
                      sorted((repo / "snapshots").glob("*/config.json")))
    for candidate in candidates:
        try:
            config = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        return config.get("text_config", config) if isinstance(config, dict) else None
    return None


def check_model_shapes(config: TeamConfig) -> list[Problem]:
    problems: list[Problem] = []
    for name, stage in (("sft", config.sft), ("rl", config.rl)):
        needs_shape = stage.sequence_parallel > 1 or (stage.lora and stage.lora.target_modules == "all-linear")
        if not needs_shape:
            continue
        shape = find_config(stage.model, config.paths.hf_home)
        if shape is None:
            problems.append(Problem(
                f"{name}.model", f"{stage.model}: no config.json here or in paths.hf_home's cache, so its head counts "
                "and experts (sequence_parallel, lora) are not checked",
                f"download it first (HF_HOME={config.paths.hf_home} hf download {stage.model} config.json), "
                "then run check again", "warning"))
            continue
        sp, heads, kv = stage.sequence_parallel, shape.get("num_attention_heads"), shape.get("num_key_value_heads")
        if sp > 1 and isinstance(heads, int) and heads % sp:
            divisors = [d for d in range(2, heads + 1) if heads % d == 0 and d <= config.slurm.gpus_per_node]
            problems.append(Problem(
                f"{name}.sequence_parallel", f"{sp} does not divide {stage.model}'s {heads} attention heads; "
                "verl splits the heads over the sequence-parallel GPUs and asserts when the model loads",
                f"use one of {divisors or [1]}"))
        elif sp > 1 and isinstance(kv, int) and kv % sp and sp % kv:
            problems.append(Problem(
                f"{name}.sequence_parallel", f"{sp} and {stage.model}'s {kv} key/value heads do not divide one another; "
                "verl asserts when the model loads",
                f"use a divisor or a multiple of {kv}"))
        if stage.lora and stage.lora.target_modules == "all-linear" and any(shape.get(k) for k in MOE_KEYS):
            problems.append(Problem(
                f"{name}.lora.target_modules", f"all-linear on the mixture-of-experts {stage.model} puts adapters on "
                "every expert and on the router (PEFT turns them into target_parameters), and `llm-bridge merge` "
                "cannot fold expert-parameter adapters into the base",
                "write the attention projections: target_modules: [q_proj, k_proj, v_proj, o_proj]"))
    return problems
