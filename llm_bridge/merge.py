"""`bridge merge`: a verl FSDP checkpoint -> a Hugging Face model directory that vLLM and transformers load.

verl's own merger does the work (`python -m verl.model_merger merge --backend fsdp`). Around it:
the newest step by default, the actor of a PPO/GRPO step found by itself, a LoRA adapter merged
into the base weights (verl writes it beside them, unmerged), a load check, and an atomic result:
the model is built in a temporary directory and renamed into place only when it loads.
"""

import shutil
import subprocess
import sys
from pathlib import Path

TRACKER = "latest_checkpointed_iteration.txt"


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
            step = int(tracker.read_text().strip())
        step_dir = checkpoint / f"global_step_{step}"
    if (step_dir / "actor").is_dir():  # PPO/GRPO: the policy lives in actor/
        step_dir = step_dir / "actor"
    if not any(step_dir.glob("model_world_size_*_rank_0.pt")):
        raise SystemExit(f"ERROR: {step_dir} holds no FSDP model shards (model_world_size_*_rank_*.pt).\n"
                         f"       Fix: check the step number; steps here: {sorted(p.name for p in step_dir.parent.glob('global_step_*'))}")
    return step_dir


def merge_lora(model_dir: Path, out: Path) -> None:
    """Fold lora_adapter/ (peft) into the base weights beside it."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16)
    merged = PeftModel.from_pretrained(base, model_dir / "lora_adapter").merge_and_unload()
    merged.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)


def verify(model_dir: Path) -> str:
    """Load the result with transformers: every weight present, tokenizer with a chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, info = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        raise SystemExit(f"ERROR: the merged model does not load cleanly: {problems}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    chat = "with a chat template" if tokenizer.chat_template else "WITHOUT a chat template"
    params = sum(p.numel() for p in model.parameters())
    return f"{type(model).__name__}, {params / 1e6:.1f}M parameters, tokenizer {chat}"


def merge(checkpoint: Path, out: Path, step: int | None = None, check: bool = True, force: bool = False) -> Path:
    out = out.expanduser().resolve()
    if out.exists() and not force:
        raise SystemExit(f"ERROR: {out} exists. Fix: choose another --out, or pass --force to replace it.")
    step_dir = find_step(checkpoint, step)
    work = out.with_name(f".{out.name}.merging")
    shutil.rmtree(work, ignore_errors=True)
    print(f"Merging {step_dir} -> {out}")
    subprocess.run([sys.executable, "-m", "verl.model_merger", "merge", "--backend", "fsdp",
                    "--local_dir", str(step_dir), "--target_dir", str(work / "raw")], check=True)
    if (work / "raw" / "lora_adapter").is_dir():
        print("LoRA adapter found: merging it into the base weights")
        merge_lora(work / "raw", work / "model")
        shutil.copytree(work / "raw" / "lora_adapter", work / "model" / "lora_adapter")
    else:
        (work / "raw").rename(work / "model")
    if check:
        print(f"Loads: {verify(work / 'model')}")
    if out.exists():
        shutil.rmtree(out)
    (work / "model").rename(out)
    shutil.rmtree(work, ignore_errors=True)
    print(f"Wrote {out}")
    return out
