"""`llm-bridge merge`: a verl FSDP checkpoint -> a Hugging Face model directory that vLLM and transformers load.

verl's own merger does the work (`python -m verl.model_merger merge --backend fsdp`). Around it:
the newest step by default, the actor of a PPO/GRPO step found by itself, a LoRA adapter folded
into the base weights shard by shard (verl writes it beside them, unfolded; lora.py), a checkpoint
that holds only the adapter (save_lora_only) folded into --base, or the adapter alone (--adapter-only),
a load check, and an atomic result: the model is built in a temporary directory and renamed into
place only when it loads. --out never overlaps the checkpoints it reads, and --force replaces only an
earlier merge output (it holds MARK).
"""

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llm_bridge import __version__
from llm_bridge.data import current_umask
from llm_bridge.evaluate.store import write_json
from llm_bridge.model.lora import (ADAPTER_FILES, fold, holds_only_adapter, read_adapter, repair_expert_adapter,
                                   resolve_base)

TRACKER = "latest_checkpointed_iteration.txt"
MARK = ".bridge-merge.json"  # in every merge output: where it came from, and what --force may replace


def find_step(checkpoint: Path, step: int | None) -> Path:
    """The directory verl's merger wants: <experiment>/global_step_N[/actor]."""
    checkpoint = checkpoint.expanduser().resolve()
    if checkpoint.name.startswith("global_step_") or checkpoint.name == "actor":
        step_dir = checkpoint
    else:
        if step is None:
            tracker = checkpoint / TRACKER
            if not tracker.is_file():
                raise SystemExit(f"ERROR: {checkpoint} has no {TRACKER}: no finished checkpoint there.\n"
                                 "       Fix: pass the experiment's checkpoint directory (trainer.default_local_dir) "
                                 "or a global_step_N directory.")
            text = tracker.read_text(errors="replace").strip()
            if not text.isdigit():
                raise SystemExit(f"ERROR: {tracker} holds {text[:40]!r}, not a step number (a save cut short?).\n"
                                 "       Fix: pass --step N for one of the global_step_N directories there.")
            step = int(text)
        step_dir = checkpoint / f"global_step_{step}"
    if (step_dir / "actor").is_dir():  # PPO/GRPO: the policy lives in actor/
        step_dir = step_dir / "actor"
    if not any(step_dir.glob("model_world_size_*_rank_0.pt")):
        raise SystemExit(f"ERROR: {step_dir} holds no FSDP model shards (model_world_size_*_rank_*.pt).\n"
                         f"       Fix: check the step number; steps here: {sorted(p.name for p in step_dir.parent.glob('global_step_*'))}")
    return step_dir


def _available_bytes() -> int:
    """The kernel's MemAvailable: host memory a new allocation can take without swapping."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def verify(model_dir: Path, available: int | None = None) -> str:
    """Load the result with transformers (every weight present, tokenizer with a chat template) when it fits in half
    of the host memory available; a larger model (235B is 470 GB in bf16) is checked without loading it: the
    parameters of the architecture built from config.json on the meta device against the tensors the safetensors
    headers list."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    chat = "with a chat template" if tokenizer.chat_template else "WITHOUT a chat template"
    size = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    if size <= (_available_bytes() if available is None else available) // 2:
        model, info = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, output_loading_info=True)
        problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if problems:
            raise SystemExit(f"ERROR: the merged model does not load cleanly: {problems}")
        params = sum(p.numel() for p in model.parameters())
        return f"{type(model).__name__}, {params / 1e6:.1f}M parameters, tokenizer {chat}"
    return f"{_verify_headers(model_dir)}, tokenizer {chat}"


def _verify_headers(model_dir: Path) -> str:
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    expected = sum(p.numel() for p in model.parameters())  # a tied output head is one parameter
    stored, shards = 0, sorted(model_dir.glob("*.safetensors"))
    for shard in shards:
        with safe_open(shard, framework="pt") as f:
            for key in f.keys():
                shape = f.get_slice(key).get_shape()
                stored += int(torch.Size(shape).numel())
    tied = model.get_output_embeddings() is not None and getattr(model.config, "tie_word_embeddings", False)
    allowed = {expected} | ({expected + model.get_output_embeddings().weight.numel()} if tied else set())
    if stored not in allowed:
        raise SystemExit(f"ERROR: the merged model's {len(shards)} safetensors shards hold {stored:,} values, and "
                         f"{type(model).__name__} built from its config.json has {expected:,} parameters: weights are "
                         "missing or extra.\n       Fix: merge again from the checkpoint; do not upload this directory")
    return (f"{type(model).__name__}, {expected / 1e9:.1f}B parameters in {len(shards)} shards (checked from the "
            "safetensors headers: too large to load here)")


def _guard_checkpoints(out: Path, checkpoint: Path, step_dir: Path) -> None:
    """--out must stay clear of every checkpoint directory it reads: --force there would delete days of training."""
    experiment = step_dir.parent.parent if step_dir.name == "actor" else step_dir.parent
    for guarded in dict.fromkeys([checkpoint, experiment, step_dir]):
        if out == guarded or guarded in out.parents or out in guarded.parents:
            where = "is" if out == guarded else "lies inside" if guarded in out.parents else "contains"
            raise SystemExit(f"ERROR: --out {out} {where} the checkpoint directory {guarded}; writing there could "
                             "delete the checkpoints this merge reads. Nothing was written.\n"
                             "       Fix: choose an --out outside the checkpoints, e.g. ~/models/<name>")


def _check_replaceable(out: Path, force: bool) -> None:
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not force:
        raise SystemExit(f"ERROR: {out} exists. Fix: choose another --out, or pass --force to replace a previous merge there.")
    if not (out / MARK).is_file():
        raise SystemExit(f"ERROR: --force replaces only an earlier `llm-bridge merge` output (it holds {MARK}), and {out} is "
                         "not one; nothing was deleted.\n"
                         f"       Fix: choose another --out, or move {out} away yourself if it may go.")


def merge(checkpoint: Path, out: Path, step: int | None = None, check: bool = True, force: bool = False,
          base: str | None = None, adapter_only: bool = False) -> Path:
    out = out.expanduser().resolve()
    step_dir = find_step(checkpoint, step)
    _guard_checkpoints(out, checkpoint.expanduser().resolve(), step_dir)
    _check_replaceable(out, force)
    lora = (step_dir / "lora_train_meta.json").is_file()  # verl writes it beside every LoRA checkpoint
    if adapter_only and not lora:
        raise SystemExit(f"ERROR: --adapter-only: {step_dir} is not a LoRA run (no lora_train_meta.json); it has no "
                         "adapter to write. Fix: leave out --adapter-only to merge the full model.")
    only_adapter = lora and holds_only_adapter(step_dir)
    base_dir = None
    if only_adapter and not adapter_only:
        if base is None:
            raise SystemExit(f"ERROR: {step_dir} holds only the LoRA adapter (lora.checkpoints: adapter); folding it "
                             "needs the model it was trained on. Nothing was written.\n"
                             "       Fix: add --base <sft.model or rl.model of team.yaml> (a Hub id or a directory), "
                             "or --adapter-only to write the adapter alone.")
        base_dir = resolve_base(base)
    elif base is not None:
        print(f"Note: --base {base} is not used: {'--adapter-only writes the adapter alone' if adapter_only else 'this checkpoint holds the base weights itself'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.merging-", dir=out.parent))
    raw, model = work / "raw", work / "model"
    try:
        print(f"Merging {step_dir} -> {out}")
        merger = "llm_bridge.model.adapter_merger" if only_adapter or adapter_only else "verl.model_merger"
        result = subprocess.run([sys.executable, "-m", merger, "merge", "--backend", "fsdp",
                                 "--local_dir", str(step_dir), "--target_dir", str(raw)])
        if result.returncode != 0:
            raise SystemExit(f"ERROR: verl's merger failed (exit code {result.returncode}) on {step_dir}; its output is "
                             f"above. Nothing was written to {out}.")
        adapter = raw / "lora_adapter"
        if adapter.is_dir() and repair_expert_adapter(adapter, json.loads((raw / "config.json").read_text())):
            print("The adapter holds expert-parameter pairs (target_parameters); its config names them for PEFT")
        if adapter_only:
            model.mkdir()
            for item in raw.iterdir():  # the run's config and tokenizer, for the adapter's users
                if item.is_file():
                    shutil.copy2(item, model / item.name)
            for name in ADAPTER_FILES:
                shutil.copy2(adapter / name, model / name)
            if base is not None:
                config = json.loads((model / "adapter_config.json").read_text())
                write_json(model / "adapter_config.json", {**config, "base_model_name_or_path": base})
            read_adapter(model)
            print("Wrote the LoRA adapter alone (--adapter-only)")
        elif adapter.is_dir():
            print("LoRA adapter found: folding it into the base weights, one shard at a time")
            if base_dir is None:
                changed = fold(raw, adapter, raw)
                raw.rename(model)
            else:
                changed = fold(base_dir, adapter, model, tokenizer_dir=raw)
                shutil.copytree(adapter, model / "lora_adapter")
            print(f"Folded the adapter into {changed} weights")
        else:
            raw.rename(model)
        if check and not adapter_only:
            print(f"Loads: {verify(model)}")
        write_json(model / MARK, {"checkpoint": str(step_dir), "merged_by": f"llm_bridge {__version__}",
                                  "merged_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                  **({"base": base} if base_dir is not None else {}),
                                  **({"adapter_only": True} if adapter_only else {})})
        model.chmod(0o777 & ~current_umask())
        if out.exists():  # an earlier merge (checked above): swap, then drop it
            out.rename(work / "previous")
        model.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"Wrote {out}")
    return out
