"""A LoRA run's adapter -> the base's weights with the adapter folded in, one safetensors shard at a time.

PEFT's merge_and_unload holds the whole model in host memory (470 GB for Qwen3-235B in bf16, twice that while
verl's merger output is still loaded). Here each base shard is read, its targeted weights get
W + scale * B @ A (computed in fp32, stored in the shard's own dtype), and it is written before the next is
read: host memory holds one shard (at most a few GB) plus the adapter.
"""

import json
import math
import os
import re
import shutil
from pathlib import Path

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# PEFT's key for one adapter matrix of the module whose base weight is <module>.weight
_ADAPTER_KEY = re.compile(r"(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.default)?\.weight")
# ... and of a 3-D expert parameter (target_parameters): PEFT wraps the experts module once per parameter, the first
# listed innermost, so each pair sits under as many .base_layer as parameters were listed after its own
_EXPERT_ADAPTER_KEY = re.compile(r"(?:base_model\.model\.)?(?P<module>.+\.experts)(?P<nested>(?:\.base_layer)*)"
                                 r"\.lora_(?P<which>[AB])(?:\.default)?\.weight")
# A Qwen3-MoE checkpoint stores every expert's projections apart; transformers packs them as gate_up_proj
# (experts, 2 x moe_intermediate, hidden: gate rows first) and down_proj (experts, hidden, moe_intermediate)
_EXPERT_WEIGHT = re.compile(r"(?P<module>.+\.experts)\.(?P<expert>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)\.weight")
EXPERT_PARAMETERS = {"gate_up_proj": ("gate_proj", "up_proj"), "down_proj": ("down_proj",)}
_MODEL_FILE_SUFFIXES = (".json", ".txt", ".jinja", ".model", ".py", ".tiktoken")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                    "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json")


def holds_only_adapter(step_dir: Path) -> bool:
    """True for a checkpoint saved with save_lora_only: rank 0's shard holds LoRA tensors and nothing else.
    The shard is memory-mapped, so a full 20 GB shard costs no read to rule out."""
    import logging

    import torch

    logging.getLogger("torch.distributed.device_mesh").setLevel(logging.ERROR)  # a DTensor unpickled without its group
    shard = next(step_dir.glob("model_world_size_*_rank_0.pt"))
    keys = list(torch.load(shard, map_location="cpu", mmap=True, weights_only=False))
    return bool(keys) and all("lora_" in k for k in keys)


def read_adapter(adapter_dir: Path) -> tuple[float, dict[str, dict], dict[str, dict]]:
    """The adapter's scale, its matrices by base weight name ({"model.layers.0.q_proj.weight": {"A": .., "B": ..}})
    and its expert-parameter pairs by packed parameter ({"model.layers.0.mlp.experts.gate_up_proj": ...}, A as
    (experts, r, in) and B as (out, r, experts))."""
    from safetensors.torch import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    unsupported = {k: config.get(k) for k in ("use_dora", "rank_pattern", "alpha_pattern", "fan_in_fan_out",
                                               "lora_bias", "modules_to_save") if config.get(k)}
    parameters = [p.rsplit(".", 1)[-1] for p in config.get("target_parameters") or []]
    if set(parameters) - set(EXPERT_PARAMETERS):
        unsupported["target_parameters"] = config["target_parameters"]
    if config.get("peft_type", "LORA") != "LORA" or unsupported:
        raise SystemExit(f"ERROR: {adapter_dir} is not a plain LoRA adapter ({unsupported or config.get('peft_type')}); "
                         "folding it is not supported.\n"
                         "       Fix: merge with --adapter-only and load the adapter with PEFT or vLLM (--enable-lora).")
    r, alpha = config["r"], config["lora_alpha"]
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    pairs: dict[str, dict] = {}
    experts: dict[str, dict] = {}
    for key, tensor in load_file(adapter_dir / "adapter_model.safetensors").items():
        expert = _EXPERT_ADAPTER_KEY.fullmatch(key) if parameters else None
        if expert is not None:
            depth = expert["nested"].count(".base_layer")
            if depth >= len(parameters):
                raise SystemExit(f"ERROR: {adapter_dir}: {key!r} is nested deeper than its {len(parameters)} "
                                 "target_parameters; the adapter_config does not describe these tensors.")
            name = f"{expert['module']}.{parameters[len(parameters) - 1 - depth]}"
            experts.setdefault(name, {})[expert["which"]] = tensor
            continue
        match = _ADAPTER_KEY.fullmatch(key)
        if match is None:
            raise SystemExit(f"ERROR: {adapter_dir}: {key!r} is not a LoRA matrix (…lora_A.weight / …lora_B.weight). "
                             "Fix: merge with --adapter-only and load the adapter with PEFT.")
        pairs.setdefault(match["module"] + ".weight", {})[match["which"]] = tensor
    halves = [name for name, pair in {**pairs, **experts}.items() if set(pair) != {"A", "B"}]
    if halves:
        raise SystemExit(f"ERROR: {adapter_dir}: {halves[0]} has lora_A or lora_B but not both; the adapter is incomplete.")
    for pair in experts.values():
        count = pair["A"].shape[0] // r
        pair["A"] = pair["A"].reshape(count, r, pair["A"].shape[-1])
        pair["B"] = pair["B"].reshape(pair["B"].shape[0], r, count)
    return scale, pairs, experts


def _expert_delta(pair: dict, expert: int, proj: str):
    """One expert's share of a packed-parameter adapter, as PEFT's ParamWrapper computes it (einsum
    "o r e, e r i -> e o i"), cut to the projection stored under that expert's own name."""
    import torch

    delta = pair["B"][:, :, expert].to(torch.float32) @ pair["A"][expert].to(torch.float32)
    if proj == "down_proj":
        return delta
    half = delta.shape[0] // 2
    return delta[:half] if proj == "gate_proj" else delta[half:]


def repair_expert_adapter(adapter_dir: Path, model_config: dict) -> bool:
    """verl's merger names an adapter's targets by the module in front of lora_A, which for 3-D expert parameters
    is "experts" or "base_layer", and drops target_parameters: PEFT could not load the adapter. Which parameter each
    nested pair adapts follows from its in and out sizes; the config is rewritten with them, innermost first.
    Returns whether the adapter had expert pairs."""
    from safetensors import safe_open

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    sizes: dict[int, dict[str, int]] = {}
    with safe_open(adapter_dir / "adapter_model.safetensors", framework="pt") as f:
        for key in f.keys():
            match = _EXPERT_ADAPTER_KEY.fullmatch(key)
            if match is not None:
                shape = f.get_slice(key).get_shape()
                entry = sizes.setdefault(match["nested"].count(".base_layer"), {})
                entry["in" if match["which"] == "A" else "out"] = shape[1] if match["which"] == "A" else shape[0]
                prefix = ".".join(match["module"].split(".")[-2:])
    if not sizes or config.get("target_parameters"):
        return bool(sizes)
    hidden, moe = model_config["hidden_size"], model_config["moe_intermediate_size"]
    known = {"gate_up_proj": {"in": hidden, "out": 2 * moe}, "down_proj": {"in": moe, "out": hidden}}
    names = []
    for depth in sorted(sizes, reverse=True):
        found = [name for name, io in known.items() if io == sizes[depth]]
        if len(found) != 1:
            raise SystemExit(f"ERROR: {adapter_dir}: an expert adapter of in/out sizes {sizes[depth]} matches "
                             f"{found or 'no parameter'} of {list(known)}; it cannot be named.\n"
                             "       Fix: merge with --adapter-only and write its target_parameters by hand.")
        names.append(f"{prefix}.{found[0]}")
    config["target_parameters"] = names
    config["target_modules"] = sorted(set(config.get("target_modules") or []) - {"experts", "base_layer"})
    (adapter_dir / "adapter_config.json").write_text(json.dumps(config, indent=4))
    return True


def weight_shards(model_dir: Path) -> list[Path]:
    """The safetensors files of a Hugging Face model directory (one file, or the shards its index lists)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return [model_dir / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    if (model_dir / "model.safetensors").is_file():
        return [model_dir / "model.safetensors"]
    raise SystemExit(f"ERROR: {model_dir} has no safetensors weights (model.safetensors or model.safetensors.index.json).\n"
                     "       Fix: pass the base model the run trained from (--base): a Hugging Face model directory "
                     "or Hub id with safetensors weights.")


def fold(base_dir: Path, adapter_dir: Path, out: Path, tokenizer_dir: Path | None = None) -> int:
    """Write base_dir's model with the adapter folded in to out (out may be base_dir: shards are then replaced
    one by one). Non-weight files come from base_dir, the tokenizer from tokenizer_dir when given (the run's own,
    chat template included). Returns the number of weights changed."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    scale, pairs, expert_pairs = read_adapter(adapter_dir)
    expert_folds = dict.fromkeys(expert_pairs, 0)
    out.mkdir(parents=True, exist_ok=True)
    shards, changed = weight_shards(base_dir), 0
    for shard in shards:
        tensors = {}
        with safe_open(shard, framework="pt") as f:
            metadata = f.metadata() or {"format": "pt"}
            for name in f.keys():
                tensor = f.get_tensor(name)
                pair = pairs.pop(name, None)
                expert = _EXPERT_WEIGHT.fullmatch(name) if expert_pairs else None
                packed = expert and next((f"{expert['module']}.{p}" for p, projs in EXPERT_PARAMETERS.items()
                                          if expert["proj"] in projs and f"{expert['module']}.{p}" in expert_pairs), None)
                if packed:
                    delta = _expert_delta(expert_pairs[packed], int(expert["expert"]), expert["proj"])
                    if delta.shape != tensor.shape:
                        raise SystemExit(f"ERROR: the adapter's share of {name} is {tuple(delta.shape)}, the base's is "
                                         f"{tuple(tensor.shape)}: this adapter was not trained on {base_dir}.\n"
                                         "       Fix: pass the base model the run trained from (--base).")
                    tensor = (tensor.to(torch.float32) + scale * delta).to(tensor.dtype)
                    expert_folds[packed] += 1
                    changed += 1
                if pair is not None:
                    delta = pair["B"].to(torch.float32) @ pair["A"].to(torch.float32)
                    if delta.shape != tensor.shape:
                        raise SystemExit(f"ERROR: the adapter's {name} is {tuple(delta.shape)}, the base's is "
                                         f"{tuple(tensor.shape)}: this adapter was not trained on {base_dir}.\n"
                                         "       Fix: pass the base model the run trained from (--base).")
                    tensor = (tensor.to(torch.float32) + scale * delta).to(tensor.dtype)
                    changed += 1
                tensors[name] = tensor
        partial = out / f".{shard.name}.partial"
        save_file(tensors, partial, metadata=metadata)
        os.replace(partial, out / shard.name)
        del tensors
    for name, folded in expert_folds.items():
        experts, projs = expert_pairs[name]["A"].shape[0], len(EXPERT_PARAMETERS[name.rsplit(".", 1)[-1]])
        if folded != experts * projs:
            pairs[name] = expert_pairs[name]  # reported below: the base has another number of experts
    if pairs:
        raise SystemExit(f"ERROR: {len(pairs)} adapter weights have no base weight in {base_dir}, e.g. {next(iter(pairs))}: "
                         "this adapter was not trained on that model.\n"
                         "       Fix: pass the base model the run trained from (--base).")
    if out != base_dir:  # config, generation config, index, tokenizer, remote code; not other weight formats or
        for item in base_dir.iterdir():  # the base's README.md (upload writes this model's own card)
            if item.is_file() and item.suffix in _MODEL_FILE_SUFFIXES and not item.name.startswith("."):
                shutil.copy2(item, out / item.name)
    if tokenizer_dir is not None:
        for name in _TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                shutil.copy2(tokenizer_dir / name, out / name)
    return changed


def resolve_base(base: str) -> Path:
    """--base: a local model directory, or a Hub id found in (or downloaded to) the Hugging Face cache."""
    path = Path(base).expanduser()
    if path.is_dir():
        return path.resolve()
    if base.startswith(("/", "~", ".")) or base.count("/") != 1:
        raise SystemExit(f"ERROR: --base {base}: no such model directory, and not a Hub id (org/name).\n"
                         "       Fix: pass the model the run trained from, as sft.model (or rl.model) in team.yaml says.")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(base, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]))
    except Exception as error:  # offline with nothing cached, a typo, no access: the message says which
        raise SystemExit(f"ERROR: --base {base}: {type(error).__name__}: {error}\n"
                         f"       Fix: download it on the login node first (hf download {base}), with HF_HOME set as the "
                         "jobs set it (paths.hf_home), or pass the local directory.") from None
