"""Rules that need the model's own shape: its config.json, read on the login node from a model directory or the
team's Hugging Face cache (paths.hf_home), never downloaded. A model not there yet is a warning, not a guess."""

import json
import re
from pathlib import Path

from llm_bridge.login.config import TeamConfig, local_path
from llm_bridge.problems import Problem

MOE_KEYS = ("num_experts", "n_routed_experts", "num_local_experts")  # Qwen3-MoE, DeepSeek, Mixtral


def find_file(model: str, hf_home: str | None, name: str) -> Path | None:
    """A file of a model directory, or of a Hub id's snapshot in <hf_home>/hub (the revision refs/main names)."""
    path = local_path(model)
    if path.is_absolute():
        return path / name if (path / name).is_file() else None
    if hf_home is None:
        return None
    repo = local_path(hf_home) / "hub" / ("models--" + model.replace("/", "--"))
    ref = repo / "refs" / "main"
    revision = ref.read_text().strip() if ref.is_file() else None
    candidates = [repo / "snapshots" / revision / name] if revision else sorted((repo / "snapshots").glob(f"*/{name}"))
    return next((c for c in candidates if c.is_file()), None)


def _json(path: Path | None) -> dict | None:
    try:
        data = json.loads(path.read_text()) if path else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def find_config(model: str, hf_home: str | None) -> dict | None:
    """The model's config.json (a multimodal model's text_config), or None when it is not here yet."""
    config = _json(find_file(model, hf_home, "config.json"))
    return config.get("text_config", config) if config else None


def chat_template(model: str, hf_home: str) -> str | None:
    """The model's chat template: chat_template.jinja, or tokenizer_config.json's chat_template."""
    jinja = find_file(model, hf_home, "chat_template.jinja")
    if jinja is not None:
        return jinja.read_text(errors="replace")
    template = (_json(find_file(model, hf_home, "tokenizer_config.json")) or {}).get("chat_template")
    return template if isinstance(template, str) else None


_SIZE_IN_NAME = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)[Bb](?![A-Za-z])")


def model_billions(model: str, hf_home: str | None = None) -> float | None:
    """Parameters in billions, from the model's config.json (a directory, or the HF cache under hf_home) or
    from the name (Qwen2.5-7B-Instruct: 7). Mixture-of-experts layers count every expert. None: unknown."""
    c = find_config(model, hf_home)
    if c is not None:
        try:
            layers, hidden, vocab = c["num_hidden_layers"], c["hidden_size"], c["vocab_size"]
            heads = c.get("num_attention_heads", 1)
            head_dim = c.get("head_dim") or hidden // heads
            q, kv = heads * head_dim, c.get("num_key_value_heads", heads) * head_dim
            attention = 2 * hidden * q + 2 * hidden * kv
            experts = next((c[k] for k in MOE_KEYS if c.get(k)), 0)
            if experts:
                mlp = experts * 3 * hidden * c.get("moe_intermediate_size", c.get("intermediate_size", 4 * hidden))
                mlp += experts * hidden + 3 * hidden * c.get("shared_expert_intermediate_size", 0)
            else:
                mlp = 3 * hidden * c.get("intermediate_size", 4 * hidden)
            embeddings = vocab * hidden * (1 if c.get("tie_word_embeddings") else 2)
            return (layers * (attention + mlp) + embeddings) / 1e9
        except (KeyError, TypeError, ZeroDivisionError):
            return None
    match = _SIZE_IN_NAME.search(Path(model).name)
    return float(match.group(1)) if match else None


def check_sft_chat_template(config: TeamConfig) -> list[Problem]:
    """Qwen3's template writes an assistant turn's <think> only after the conversation's last user message.
    verl 0.9.1's SFT dataset renders each message on its own and compares with the whole conversation: with
    that template it stops on the first sample (or, told to ignore it, trains without the thinking)."""
    sft = config.sft
    if sft.chat_template != "model":
        return []
    template = chat_template(sft.model, config.paths.hf_home)
    fix = "set sft.chat_template: qwen3_sft (Qwen3's format with every assistant turn written as given, <think> included)"
    if template is not None and "last_query_index" in template and "</think>" in template:
        return [Problem("sft.chat_template", f"{sft.model}'s own chat template drops an assistant turn's <think> unless "
                        "it follows the last user message, and verl's SFT dataset renders each message alone: the job "
                        "would stop on its first sample (or train without the thinking)", fix)]
    if template is None and "qwen3" in sft.model.lower():
        return [Problem("sft.chat_template", f"{sft.model}'s chat template is not here to check; Qwen3's own template "
                        "stops verl's SFT dataset on the first sample", f"{fix}, or download the model and check again",
                        "warning")]
    return []


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
