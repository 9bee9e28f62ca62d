"""Rules that need the model's own shape: its config.json, read on the login node from a model directory or the
team's Hugging Face cache (paths.hf_home), never downloaded. A model not there yet is a warning, not a guess."""

import json
import re
from dataclasses import dataclass
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


def find_config(model: str, hf_home: str | None, known: bool = True) -> dict | None:
    """The model's config.json (a multimodal model's text_config); when it is not here yet and `known`, the published
    values of a model the teams train (KNOWN_CONFIGS); else None."""
    config = _json(find_file(model, hf_home, "config.json"))
    if config:
        return config.get("text_config", config)
    return _KNOWN.get(model.lower()) if known else None


def chat_template(model: str, hf_home: str) -> str | None:
    """The model's chat template: chat_template.jinja, or tokenizer_config.json's chat_template."""
    jinja = find_file(model, hf_home, "chat_template.jinja")
    if jinja is not None:
        return jinja.read_text(errors="replace")
    template = (_json(find_file(model, hf_home, "tokenizer_config.json")) or {}).get("chat_template")
    return template if isinstance(template, str) else None


_SIZE_IN_NAME = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)[Bb](?![A-Za-z])")

# Published config.json values of the models the teams train (the fields the planner reads), so that `check` can plan
# for a model before its files are downloaded. A model's own config.json, where it is here, wins.
_QWEN3 = dict(vocab_size=151936, head_dim=128, tie_word_embeddings=False)
_QWEN25 = dict(vocab_size=151936, tie_word_embeddings=True)
_DEEPSEEK_V3 = dict(  # DeepSeek-V3 / R1 / R1-0528: multi-head latent attention, 3 dense layers, then 256 experts
    num_hidden_layers=61, hidden_size=7168, num_attention_heads=128, intermediate_size=18432,
    moe_intermediate_size=2048, n_routed_experts=256, num_experts_per_tok=8, n_shared_experts=1,
    first_k_dense_replace=3, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
    v_head_dim=128, vocab_size=129280, tie_word_embeddings=False)
KNOWN_CONFIGS = {
    "Qwen/Qwen3-8B": dict(num_hidden_layers=36, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                          intermediate_size=12288, **_QWEN3),
    "Qwen/Qwen3-32B": dict(num_hidden_layers=64, hidden_size=5120, num_attention_heads=64, num_key_value_heads=8,
                           intermediate_size=25600, **_QWEN3),
    "Qwen/Qwen3-30B-A3B": dict(num_hidden_layers=48, hidden_size=2048, num_attention_heads=32, num_key_value_heads=4,
                               intermediate_size=6144, moe_intermediate_size=768, num_experts=128,
                               num_experts_per_tok=8, **_QWEN3),
    "Qwen/Qwen3-235B-A22B": dict(num_hidden_layers=94, hidden_size=4096, num_attention_heads=64,
                                 num_key_value_heads=4, intermediate_size=12288, moe_intermediate_size=1536,
                                 num_experts=128, num_experts_per_tok=8, **_QWEN3),
    "deepseek-ai/DeepSeek-R1": _DEEPSEEK_V3,
    "deepseek-ai/DeepSeek-R1-0528": _DEEPSEEK_V3,
    "Qwen/Qwen2.5-0.5B-Instruct": dict(num_hidden_layers=24, hidden_size=896, num_attention_heads=14,
                                       num_key_value_heads=2, intermediate_size=4864, **_QWEN25),
    "Qwen/Qwen2.5-3B-Instruct": dict(num_hidden_layers=36, hidden_size=2048, num_attention_heads=16,
                                     num_key_value_heads=2, intermediate_size=11008, **_QWEN25),
    "Qwen/Qwen2.5-7B-Instruct": dict(num_hidden_layers=28, hidden_size=3584, num_attention_heads=28,
                                     num_key_value_heads=4, intermediate_size=18944, vocab_size=152064,
                                     tie_word_embeddings=False),
    "Qwen/Qwen2.5-1.5B-Instruct": dict(num_hidden_layers=28, hidden_size=1536, num_attention_heads=12,
                                       num_key_value_heads=2, intermediate_size=8960, **_QWEN25),
}
_KNOWN = {name.lower(): config for name, config in KNOWN_CONFIGS.items()}
_KNOWN.update({name.lower().removesuffix("-instruct"): c for name, c in KNOWN_CONFIGS.items()})


@dataclass(frozen=True)
class Shape:
    """What memory depends on, from config.json. Dimensions are per token; a layer's MLP is its largest one."""

    layers: int
    hidden: int
    intermediate: int      # a dense MLP's width (MoE: the dense layers', if any)
    q_dim: int             # attention query width (heads x head_dim)
    kv_dim: int            # one of key or value's width
    vocab: int
    layer_params: int      # the largest decoder layer (an MoE layer holds every expert): FSDP gathers one at a time
    params: int            # the whole model
    embedding_params: int  # input embeddings and output head (one matrix when tied): FSDP's root unit
    experts: int = 0
    top_k: int = 0
    moe_intermediate: int = 0
    published: bool = False  # from KNOWN_CONFIGS, not from a config.json here

    @property
    def moe(self) -> bool:
        return self.experts > 0

    def activation_elements(self) -> int:
        """Tensors one decoder layer keeps per token for its backward pass (the planner's unit, docs/benchmarks.md):
        residual and norm inputs and outputs (4h), attention's q/k/v after RoPE and its output (2q + 2kv), and the
        MLP's gate, up and activation (3I); an MoE layer instead keeps, for each routed expert of a token, the
        token's copy and its expert's gate, up and activation, plus the router's logits."""
        attention = 4 * self.hidden + 2 * self.q_dim + 2 * self.kv_dim
        if self.moe:
            return attention + self.top_k * (self.hidden + 3 * self.moe_intermediate) + 2 * self.experts
        return attention + 3 * self.intermediate

    def lora_params(self, rank: int, targets: str | list[str], parameters: list[str] | None = None) -> int:
        """LoRA's trainable parameters: rank x (in + out) for each targeted projection of every layer (all-linear:
        attention and dense MLP; `check` refuses all-linear on MoE), and rank x experts x (in + out) for each
        targeted expert parameter (PEFT's ParamWrapper gives every expert its own rank-r pair)."""
        h, q, kv, i, m = self.hidden, self.q_dim, self.kv_dim, self.intermediate, self.moe_intermediate
        sizes = {"q_proj": h + q, "k_proj": h + kv, "v_proj": h + kv, "o_proj": q + h}
        if not self.moe:
            sizes.update(gate_proj=h + i, up_proj=h + i, down_proj=i + h)
        names = sizes if targets == "all-linear" else [t for t in targets if t in sizes]
        experts = {"gate_up_proj": h + 2 * m, "down_proj": m + h}
        per_expert = sum(experts.get(p.rsplit(".", 1)[-1], 0) for p in parameters or [])
        return self.layers * rank * (sum(sizes[n] for n in names) + self.experts * per_expert)


def shape_of(c: dict, published: bool = False) -> Shape | None:
    """A Shape from config.json values (dense, Qwen3-MoE, DeepSeek-V3's latent attention and dense first layers)."""
    try:
        layers, hidden, vocab = int(c["num_hidden_layers"]), int(c["hidden_size"]), int(c["vocab_size"])
        heads = int(c.get("num_attention_heads", 1))
        intermediate = int(c.get("intermediate_size", 4 * hidden))
        if c.get("kv_lora_rank"):  # multi-head latent attention: low-rank query and key/value projections
            qk = int(c["qk_nope_head_dim"]) + int(c["qk_rope_head_dim"])
            v = int(c["v_head_dim"])
            q_rank, kv_rank = int(c.get("q_lora_rank") or 0), int(c["kv_lora_rank"])
            query = hidden * q_rank + q_rank * heads * qk if q_rank else hidden * heads * qk
            attention = (query + hidden * (kv_rank + int(c["qk_rope_head_dim"]))
                         + kv_rank * heads * (int(c["qk_nope_head_dim"]) + v) + heads * v * hidden)
            q_dim, kv_dim = heads * qk, heads * v
        else:
            head_dim = int(c.get("head_dim") or hidden // heads)
            q_dim, kv_dim = heads * head_dim, int(c.get("num_key_value_heads", heads)) * head_dim
            attention = 2 * hidden * q_dim + 2 * hidden * kv_dim
        experts = int(next((c[k] for k in MOE_KEYS if c.get(k)), 0))
        dense_mlp = 3 * hidden * intermediate
        if experts:
            moe_i = int(c.get("moe_intermediate_size", intermediate))
            shared = int(c.get("shared_expert_intermediate_size") or int(c.get("n_shared_experts") or 0) * moe_i)
            moe_mlp = experts * 3 * hidden * moe_i + experts * hidden + 3 * hidden * shared
            dense_layers = int(c.get("first_k_dense_replace", 0)) + len(c.get("mlp_only_layers") or [])
            mlp_total = dense_layers * dense_mlp + (layers - dense_layers) * moe_mlp
            top_k = int(c.get("num_experts_per_tok", 8))
        else:
            moe_i = top_k = moe_mlp = 0
            mlp_total = layers * dense_mlp
        embeddings = vocab * hidden * (1 if c.get("tie_word_embeddings") else 2)
        return Shape(layers=layers, hidden=hidden, intermediate=intermediate, q_dim=q_dim, kv_dim=kv_dim, vocab=vocab,
                     layer_params=attention + max(moe_mlp, dense_mlp), params=layers * attention + mlp_total + embeddings,
                     embedding_params=embeddings, experts=experts, top_k=top_k, moe_intermediate=moe_i,
                     published=published)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def find_shape(model: str, hf_home: str | None = None) -> Shape | None:
    """The model's Shape: its config.json (a directory, or the HF cache under hf_home), else the published values
    of a model the teams train (KNOWN_CONFIGS, by Hub id). None: unknown."""
    config = find_config(model, hf_home, known=False)
    if config is not None:
        return shape_of(config)
    known = _KNOWN.get(model.lower())
    return shape_of(known, published=True) if known else None


def model_billions(model: str, hf_home: str | None = None) -> float | None:
    """Parameters in billions, from the model's shape (find_shape) or from the name (Qwen2.5-7B-Instruct: 7).
    Mixture-of-experts layers count every expert. None: unknown."""
    shape = find_shape(model, hf_home)
    if shape is not None:
        return shape.params / 1e9
    match = _SIZE_IN_NAME.search(Path(model).name)
    return float(match.group(1)) if match else None


LAYERED_SUMMON_BILLIONS = 70  # verl's advice for LoRA rollouts of 70B+


def layered_summon(config) -> bool:
    """GRPO with LoRA on a 70B+ model: verl gathers one FSDP unit at a time when it syncs the adapter to vLLM."""
    return bool(config.rl.lora) and (model_billions(config.rl.model, config.paths.hf_home) or 0) >= LAYERED_SUMMON_BILLIONS


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
        needs_shape = stage.sequence_parallel > 1 or bool(stage.lora) or bool(stage.recompute_layers)
        if not needs_shape:
            continue
        shape = find_config(stage.model, config.paths.hf_home)
        if shape is None:
            problems.append(Problem(
                f"{name}.model", f"{stage.model}: no config.json here or in paths.hf_home's cache, so its head counts, "
                "experts and layers (sequence_parallel, lora, recompute_layers) are not checked",
                f"download it first (HF_HOME={config.paths.hf_home} hf download {stage.model} config.json), "
                "then run check again", "warning"))
            continue
        sp, heads, kv = stage.sequence_parallel, shape.get("num_attention_heads"), shape.get("num_key_value_heads")
        if sp > 1 and isinstance(heads, int) and heads % sp:
            gpus = config.slurm.gpus_per_node
            divisors = [d for d in range(2, heads + 1) if heads % d == 0 and gpus % d == 0]
            problems.append(Problem(
                f"{name}.sequence_parallel", f"{sp} does not divide {stage.model}'s {heads} attention heads; "
                "verl splits the heads over the sequence-parallel GPUs and asserts when the model loads",
                f"use one of {divisors or [1]}"))
        elif sp > 1 and isinstance(kv, int) and kv % sp and sp % kv:
            problems.append(Problem(
                f"{name}.sequence_parallel", f"{sp} and {stage.model}'s {kv} key/value heads do not divide one another; "
                "verl asserts when the model loads",
                f"use a divisor or a multiple of {kv}"))
        layers = shape.get("num_hidden_layers")
        if stage.recompute_layers and isinstance(layers, int) and stage.recompute_layers >= layers:
            problems.append(Problem(
                f"{name}.recompute_layers", f"{stage.recompute_layers} is not fewer than {stage.model}'s {layers} "
                "decoder layers: every layer would recompute, as without it",
                f"use fewer than {layers} (llm-bridge check plans the memory), or remove {name}.recompute_layers"))
        moe = any(shape.get(k) for k in MOE_KEYS)
        if stage.lora and stage.use_liger and moe:
            problems.append(Problem(
                f"{name}.use_liger", f"Liger replaces {stage.model}'s experts with a fused kernel that computes every "
                "expert's weight gradient, frozen or not, and tunes itself for minutes on first use: LoRA SFT of "
                "Qwen3-30B-A3B ran at 4,269 tokens/s with it (its expert kernel's tuning skipped) and 4,791 without "
                "Liger on the same H200; without Liger the recipe's own experts forward runs (5,979, docs/benchmarks.md)",
                f"set {name}.use_liger: false", "warning"))
        if stage.lora and stage.lora.target_parameters and not moe:
            problems.append(Problem(
                f"{name}.lora.target_parameters", f"{stage.model} is not a mixture-of-experts model: it has no expert "
                "parameters to adapt", f"remove {name}.lora.target_parameters; target_modules covers a dense model's "
                "linear layers"))
        if stage.lora and stage.lora.target_modules == "all-linear" and moe:
            problems.append(Problem(
                f"{name}.lora.target_modules", f"all-linear on the mixture-of-experts {stage.model} does not mean attention "
                "and MLP as on a dense model: PEFT 0.21 adapts the router and every expert too, implicitly, in a form "
                "`llm-bridge merge` does not fold",
                "write the attention projections, target_modules: [q_proj, k_proj, v_proj, o_proj], and to adapt the "
                "experts as well (SFT), target_parameters: [mlp.experts.gate_up_proj, mlp.experts.down_proj]"))
    return problems
