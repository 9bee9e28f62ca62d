"""`llm-bridge doctor`: is this Python environment ready to train? One row per check, never a token."""

import importlib
import importlib.metadata
import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

VERL_PIN = "0.9.1"
VLLM_PIN = "0.24"
FLASH_ATTN_PIN = "2.8.3"  # the version verl 0.9.1's `fsdp` extra pins
SCRIPTS_ALLOCATOR = "expandable_segments:True"  # PYTORCH_CUDA_ALLOC_CONF of the training scripts (_allocator.sh.j2)


@dataclass
class Row:
    name: str
    status: str  # PASS, WARN, FAIL
    detail: str


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_python() -> Row:
    ok = sys.version_info >= (3, 10)
    return Row("python", "PASS" if ok else "FAIL", f"{sys.version.split()[0]} at {sys.executable}")


def check_torch() -> list[Row]:
    try:
        import torch
    except Exception as exc:  # a broken install raises more than ImportError
        return [Row("torch", "FAIL", f"cannot import: {exc}"), Row("gpus", "FAIL", "torch missing")]
    rows = [Row("torch", "PASS", f"{torch.__version__} (CUDA build {torch.version.cuda or 'none: CPU only'})")]
    if not torch.cuda.is_available():
        rows.append(Row("gpus", "FAIL", "no CUDA device visible: run on a compute node (bash rendered/compute_node.sh)"))
        rows.append(Row("nccl", "FAIL", "needs a CUDA device"))
        return rows
    names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
    rows.append(Row("gpus", "PASS", f"{torch.cuda.device_count()} x {', '.join(names)}"))
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if torch.distributed.is_nccl_available() else None
    rows.append(Row("nccl", "PASS" if nccl else "FAIL", nccl or "torch was built without NCCL"))
    return rows


def check_verl() -> list[Row]:
    version = _version("verl")
    if version is None:
        return [Row("verl", "FAIL", f"not installed: pip install 'verl[vllm]=={VERL_PIN}'")]
    rows = [Row("verl", "PASS" if version == VERL_PIN else "FAIL",
                version if version == VERL_PIN else f"{version}, but the recipe is written for {VERL_PIN}")]
    for module in ("verl.trainer.sft_trainer", "verl.trainer.main_ppo", "verl.model_merger"):
        found = importlib.util.find_spec(module) is not None
        rows.append(Row(f"  {module}", "PASS" if found else "FAIL", "found" if found else "missing from this verl"))
    return rows


def check_package(name: str, dist: str, need: str, missing_status: str, fix: str) -> Row:
    version = _version(dist)
    if version is None:
        return Row(name, missing_status, f"not installed: {fix}")
    status = "PASS" if version.startswith(need) else "WARN"
    return Row(name, status, version if status == "PASS" else f"{version} (the recipe is tested with {need})")


def check_allocator() -> Row:
    """sbatch hands the submitting shell's environment to the job, and the training scripts keep a
    PYTORCH_CUDA_ALLOC_CONF found there instead of their SCRIPTS_ALLOCATOR."""
    value = os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
    if value is None:
        return Row("allocator", "PASS",
                   f"PYTORCH_CUDA_ALLOC_CONF unset: the SFT and GRPO/PPO scripts set {SCRIPTS_ALLOCATOR}")
    settings = dict(item.strip().partition(":")[::2] for item in value.split(",") if item.strip())
    key, _, wanted = SCRIPTS_ALLOCATOR.partition(":")
    if settings.get(key) == wanted:
        return Row("allocator", "PASS", f"PYTORCH_CUDA_ALLOC_CONF={value}")
    return Row("allocator", "WARN",
               f"PYTORCH_CUDA_ALLOC_CONF={value} replaces the scripts' {SCRIPTS_ALLOCATOR}: vLLM's sampler then "
               "holds up to 18 GiB outside rl.gpu_memory_utilization during GRPO, more than llm-bridge check counts "
               f"(docs/benchmarks.md). unset PYTORCH_CUDA_ALLOC_CONF, or add {SCRIPTS_ALLOCATOR} to it")


def wandb_logged_in() -> bool:
    """WANDB_API_KEY set, or `wandb login` wrote ~/.netrc (the same test the rendered jobs make)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return "api.wandb.ai" in (Path.home() / ".netrc").read_text(errors="ignore")
    except OSError:  # none, or unreadable: either way the jobs would find no login there
        return False


def check_logins() -> list[Row]:
    rows = []
    try:
        from huggingface_hub import get_token

        token = get_token()
    except Exception:
        token = os.environ.get("HF_TOKEN")
    rows.append(Row("huggingface login", "PASS" if token else "WARN",
                    "token found (not shown)" if token else "not logged in: hf auth login"))
    wandb = wandb_logged_in()
    rows.append(Row("wandb login", "PASS" if wandb else "WARN",
                    "API key found (not shown)" if wandb else "not logged in: wandb login (or wandb.mode: offline)"))
    return rows


def check_command_name() -> Row:
    """The recipe's command is llm-bridge; every Linux has iproute2's `bridge`, which answers a forgotten
    `conda activate` with 'Object "check" is unknown'. Say which one a bare `bridge` runs."""
    found = shutil.which("bridge")
    if found is None:
        return Row("command name", "PASS", "llm-bridge (no other `bridge` on PATH)")
    return Row("command name", "WARN", f"`bridge` here is {found}, not this recipe: type llm-bridge")


def run() -> list[Row]:
    return [
        check_python(),
        *check_torch(),
        *check_verl(),
        check_package("vllm", "vllm", VLLM_PIN, "FAIL", f"GRPO/PPO rollout needs vLLM {VLLM_PIN}: pip install 'verl[vllm]=={VERL_PIN}'"),
        check_package("flash-attn", "flash-attn", "2.", "WARN",
                      "SFT and GRPO default to attn_implementation: flash_attention_2; build it (install_env.sbatch), "
                      "or set attn_implementation: flex_attention, the fastest without it (docs/benchmarks.md)"),
        check_package("liger-kernel", "liger-kernel", "0.8.", "WARN",
                      "sft.use_liger and rl.use_liger (true by default) need it: rerun install_env.sbatch, or set them to false"),
        check_package("transformers", "transformers", "5.", "FAIL", "pip install 'transformers<5.11'"),
        check_package("ray", "ray", "2.", "FAIL", "pip install 'ray[default]'"),
        check_allocator(),
        *check_logins(),
        check_command_name(),
    ]


def format_table(rows: list[Row]) -> str:
    width = max(len(r.name) for r in rows)
    lines = [f"{'check'.ljust(width)}  status  detail", f"{'-' * width}  ------  ------"]
    lines += [f"{r.name.ljust(width)}  {r.status:<6}  {r.detail}" for r in rows]
    failed = [r.name.strip() for r in rows if r.status == "FAIL"]
    lines.append("")
    lines.append(f"FAIL: {', '.join(failed)}" if failed else "All required checks passed.")
    return "\n".join(lines)
