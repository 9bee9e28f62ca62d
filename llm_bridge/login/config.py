"""The team.yaml schema: one pydantic model per section.

Field-level rules live here (types, ranges, path syntax). Rules that relate several fields — node
counts, GPU divisibility, verl's batch arithmetic — live in `rules.py`, so that each message can
name every field involved and the fix.
"""

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from llm_bridge.login.shell import PATH_CHARS

# Characters that survive a bash double-quoted string *and* a Hydra override unquoted (llm_bridge/login/shell.py).
_SAFE_PATH = re.compile(f"[{PATH_CHARS}]*")
_HOME_PREFIXES = ("${HOME}", "$HOME", "~")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
# A SLURM hostlist: names, [ranges] and commas (llm_bridge/login/hostlist.py expands it in `llm-bridge check`).
_HOSTLIST = re.compile(r"[A-Za-z0-9._\[\],-]+")
# An OpenAI-compatible base URL: scheme, host, optional port and path; nothing a shell would read.
_URL = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9_.+@%/-]*)?")


def local_path(value: str) -> Path:
    """A path of the config (normalized by _shell_path: absolute, or under ${HOME}) on this machine."""
    return Path(value.replace("${HOME}", str(Path.home()), 1))


def _shell_path(value: str) -> str:
    """Absolute path, or one under the user's home. `~` and `$HOME` become `${HOME}`.

    Scripts put the value inside double quotes, so `${HOME}` expands at run time on every node —
    the seed's `"~/conda_env"` never did.
    """
    for prefix in _HOME_PREFIXES:
        if value == prefix or value.startswith(prefix + "/"):
            rest = value[len(prefix):]
            if not _SAFE_PATH.fullmatch(rest):
                raise ValueError(_unsafe_path_message(value))
            return "${HOME}" + rest.rstrip("/")
    if not _SAFE_PATH.fullmatch(value):
        raise ValueError(_unsafe_path_message(value))
    if not value.startswith("/"):
        raise ValueError(
            f"{value!r} is relative; jobs start in another directory. "
            f"Fix: write an absolute path (/home/...) or one under your home (~/{value})"
        )
    return value.rstrip("/") or "/"


def _unsafe_path_message(value: str) -> str:
    return (
        f"{value!r} has characters that break shell quoting or Hydra overrides. "
        "Fix: use only letters, digits and _ . + @ - / (no spaces)"
    )


def _model_ref(value: str) -> str:
    if _HUB_ID.fullmatch(value):
        return value
    try:
        return _shell_path(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is neither a Hugging Face Hub id (org/name) nor an absolute path. "
            "Fix: write e.g. Qwen/Qwen2.5-0.5B-Instruct or ~/models/my-sft-model"
        ) from None


def _hostlist(value: str) -> str:
    if not _HOSTLIST.fullmatch(value):
        raise ValueError(f"{value!r} is not a SLURM hostlist (letters, digits, . _ - and [ranges] joined by commas). "
                         "Fix: write e.g. osk-gpu[51-53] or osk-gpu51,osk-gpu52")
    return value


def _url(value: str) -> str:
    if not _URL.fullmatch(value):
        raise ValueError(f"{value!r} is not a plain http(s) URL (scheme, host, optional port and path). "
                         "Fix: write e.g. http://judge-node:8000/v1")
    return value


def _lora_rank(value: int) -> int:
    if not 1 <= value <= 512:
        raise ValueError(f"{value} is not a LoRA rank the GRPO rollout can load: vLLM takes 1 to 512 (verl rounds "
                         "it up to 8, 16, 32, 64, 128, 256, 320 or 512). Fix: use 8 to 256; 32 and 64 are common")
    return value


def _lora_alpha(value: int) -> int:
    if value <= 0:
        raise ValueError(f"{value} is not a LoRA alpha (the adapter's scale is alpha / rank). "
                         "Fix: write a positive number, commonly twice the rank (64 for rank 32)")
    return value


def _target_modules(value):
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) and _WORD.fullmatch(i) for i in items):
        raise ValueError(f"{value!r} is not what PEFT can target. Fix: write all-linear, or a list of module names "
                         "such as [q_proj, k_proj, v_proj, o_proj]")
    return value


def _excluded_modules(value):
    return value if value is None else _target_modules(value)


def _absolute(value: str) -> str:
    if value.startswith("${HOME}"):
        raise ValueError(
            "SLURM reads #SBATCH --output before any shell runs, so ~ and $HOME are not expanded there. "
            "Fix: write the absolute path, e.g. /home/<team>/<user>/logs"
        )
    return value


ShellPath = Annotated[str, AfterValidator(_shell_path)]
LogsPath = Annotated[str, AfterValidator(_shell_path), AfterValidator(_absolute)]
ModelRef = Annotated[str, AfterValidator(_model_ref)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
_WORD = re.compile(r"[A-Za-z0-9_.:/+-]+")
Word = Annotated[str, Field(pattern=f"^{_WORD.pattern}$")]
Port = Annotated[int, Field(ge=1024, le=32767)]  # below Linux's ephemeral range (32768-60999)
PositiveInt = Annotated[int, Field(ge=1)]
Freq = Annotated[int, Field(ge=-1)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)  # defaults such as ~/eval normalised too


class Slurm(Section):
    partition: Name
    nodes: Annotated[int, Field(ge=1, le=64)]
    nodelist: Annotated[str, AfterValidator(_hostlist)] | None = None
    gpus_per_node: Annotated[int, Field(ge=1, le=16)]
    # What `check` plans each stage against: one GPU's memory (an 80 GB H100 is 79.65 GiB, nvidia-smi's 81,559 MiB)
    # and, when known, one node's host memory (rank 0 loads the whole model there)
    gpu_memory_gib: Annotated[float, Field(gt=0)] = 79.65
    host_memory_gib: PositiveInt | None = None
    cpus_per_task: PositiveInt
    mem: Annotated[str, Field(pattern=r"^\d+[KMGT]?$")] = "0"
    time_limit: Annotated[str, Field(pattern=r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$")]
    # SLURM warns the job this long before its time limit; the job then requeues itself and resumes.
    signal_before_limit_s: Annotated[int, Field(ge=10)] = 300

    @property
    def time_limit_s(self) -> int:
        """SLURM's MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS, in seconds."""
        days, _, clock = self.time_limit.rpartition("-")
        parts = [int(p) for p in clock.split(":")]
        if days:
            hours, minutes, seconds = (parts + [0, 0])[:3]
        elif len(parts) == 3:
            hours, minutes, seconds = parts
        else:
            hours, minutes, seconds = 0, parts[0], (parts + [0])[1]
        return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


class Environment(Section):
    module_init: ShellPath | None = None
    modules: list[Word] = []
    conda_sh: ShellPath | None = None
    conda_env: ShellPath | None = None
    venv: ShellPath | None = None  # a Python venv instead of conda (uv users, the CPU pipeline)

    @model_validator(mode="after")
    def _one_python(self) -> "Environment":
        conda = self.conda_sh is not None and self.conda_env is not None
        if conda == (self.venv is not None) or (self.conda_sh is None) != (self.conda_env is None):
            raise ValueError(
                "set either conda_sh and conda_env (conda) or venv (a Python venv), not both or neither. "
                "Fix: keep conda_sh and conda_env as in templates/team.example.yaml, or replace them with venv: <path>"
            )
        return self

    @property
    def activate_script(self) -> str:
        return self.conda_sh if self.venv is None else f"{self.venv}/bin/activate"


class Paths(Section):
    checkpoints: ShellPath
    logs: LogsPath
    hf_home: ShellPath
    models: ShellPath = "~/models"  # merged models: <models>/<experiment_name> (llm-bridge submit's merge stages)


class Network(Section):
    socket_ifname: Word | None = None
    ib_hca: list[Word] = []
    ib_gid_index: Annotated[int, Field(ge=0, le=255)] | None = None
    nccl_debug: Literal["VERSION", "WARN", "INFO", "TRACE"] = "WARN"
    rendezvous_port: Port = 29500
    rendezvous_timeout_s: Annotated[int, Field(ge=30)] = 900


class Ray(Section):
    head_port: Port = 6379
    dashboard_port: Port = 8265
    client_server_port: Port = 10001
    node_manager_port: Port = 6700
    object_manager_port: Port = 6701
    runtime_env_agent_port: Port = 6702
    dashboard_agent_grpc_port: Port = 6703
    dashboard_agent_listen_port: Port = 6704
    metrics_export_port: Port = 6705
    min_worker_port: Port = 11000
    max_worker_port: Port = 12999
    join_timeout_s: Annotated[int, Field(ge=30)] = 600

    @model_validator(mode="after")
    def _worker_range(self) -> "Ray":
        if self.max_worker_port - self.min_worker_port < 99:
            raise ValueError(
                f"worker port range {self.min_worker_port}-{self.max_worker_port} holds fewer than 100 ports. "
                "Fix: widen ray.min_worker_port..ray.max_worker_port (each Ray worker takes one)"
            )
        return self


class Wandb(Section):
    entity: Name | None = None
    project: Name
    mode: Literal["online", "offline", "disabled"] = "online"


class HuggingFace(Section):
    org: Name
    offline: bool = False


class LoRA(Section):
    """LoRA adapters on a frozen base instead of full fine-tuning (verl's model.lora_* keys, PEFT underneath)."""

    rank: Annotated[int, AfterValidator(_lora_rank)]  # the GRPO rollout's vLLM takes LoRA ranks up to 512
    alpha: Annotated[int, AfterValidator(_lora_alpha)]
    # PEFT names: all-linear, or module names such as q_proj
    target_modules: Annotated[str | list[str], BeforeValidator(_target_modules)] = "all-linear"
    exclude_modules: Annotated[list[str] | None, BeforeValidator(_excluded_modules)] = None
    # 3-D parameters PEFT adapts directly, a mixture-of-experts layer's experts (SFT only), e.g. Qwen3-MoE's
    # [mlp.experts.gate_up_proj, mlp.experts.down_proj]
    target_parameters: Annotated[list[str] | None, BeforeValidator(_excluded_modules)] = None
    # The frozen base's dtype. bf16 halves its memory; the adapters then train in bf16 too (verl casts them).
    base_dtype: Literal["bf16", "fp32"] = "bf16"
    # adapter: checkpoints hold the adapter and its optimizer only (MBs instead of the whole model per save;
    # resuming reloads the base from `model`); `llm-bridge merge --base <model>` folds it in. full: verl's default.
    checkpoints: Literal["adapter", "full"] = "adapter"


class RolloutCorrection(Section):
    """verl's rollout correction (algorithm.rollout_correction) for the gap between vLLM's log-probs and the actor's.

    rollout_is: importance weights pi_actor / pi_rollout, per token or per sequence, truncated at
    rollout_is_threshold (TIS); with old_log_probs: recompute only (in bypass mode PPO's ratio already is that weight).
    rollout_rs: rejection, one of verl's modes: <token|seq_sum|seq_mean|seq_max>_<k1|k2|k3> (seq_max only k2, k3).
    Tokens or sequences past rollout_rs_threshold leave the loss. k1 compares the ratio itself: a bound t keeps
    ratios within [1/t, t] (verl's preset: 1.001 for seq_mean_k1). k2 and k3 are divergences: t is their upper
    bound (verl's preset: 0.01 for k3)."""

    rollout_is: Literal["token", "sequence"] | None = None
    rollout_is_threshold: Annotated[float, Field(gt=1)] = 2.0
    rollout_rs: Literal["token_k1", "token_k2", "token_k3", "seq_sum_k1", "seq_sum_k2", "seq_sum_k3", "seq_mean_k1",
                        "seq_mean_k2", "seq_mean_k3", "seq_max_k2", "seq_max_k3"] | None = None
    rollout_rs_threshold: Annotated[float, Field(gt=0)] | None = None


class Stage(Section):
    """What SFT and RL share: naming, data, schedule, checkpoints."""

    experiment_name: Name
    model: ModelRef
    train_files: ShellPath
    val_files: ShellPath | None = None
    lr: Annotated[float, Field(gt=0, le=1)]
    total_epochs: PositiveInt
    total_training_steps: PositiveInt | None = None
    save_freq: PositiveInt
    test_freq: Freq = -1
    max_ckpt_to_keep: PositiveInt | None = None
    strategy: Literal["fsdp", "fsdp2"] = "fsdp2"
    gradient_checkpointing: bool = True
    # with gradient_checkpointing: only the first N decoder layers recompute their forward pass in the backward; the
    # others keep their activations (faster, more GPU memory: llm-bridge check plans it). None: every layer
    recompute_layers: PositiveInt | None = None
    # sdpa_cudnn: torch's SDPA on cuDNN, a sequence at a time (llm_bridge/job/cudnn_attention.py)
    attn_implementation: Literal["flash_attention_2", "sdpa_cudnn", "sdpa", "flex_attention",
                                 "eager"] = "flash_attention_2"
    use_liger: bool = False  # Liger's Triton kernels (RMSNorm, RoPE, SwiGLU): GPU only, needs liger-kernel
    lora: LoRA | None = None  # absent: full fine-tuning
    # Ulysses sequence parallelism: each sequence's attention heads are split over this many GPUs, so one
    # sample of up to max_token_len_per_gpu x sequence_parallel tokens fits; 1 = off
    sequence_parallel: PositiveInt = 1
    cpu_offload: bool = False  # FSDP2's CPU offload policy: parameters, gradients and optimizer live in host memory
    activation_offload: bool = False  # checkpointed layer inputs go to host memory between forward and backward


class SFT(Stage):
    messages_key: Word = "messages"
    # model: the model's own chat template. qwen3_sft: Qwen3's format with every assistant turn's <think> kept
    # (llm_bridge/job/chat_templates/qwen3_sft.jinja); Qwen3's own template loses it in verl's SFT dataset.
    chat_template: Literal["model", "qwen3_sft"] = "model"
    train_batch_size: PositiveInt
    use_dynamic_bsz: bool = True
    max_token_len_per_gpu: PositiveInt
    micro_batch_size_per_gpu: PositiveInt
    max_length: Annotated[int, Field(ge=16)]
    truncation: Literal["error", "left", "right"] = "right"
    lr_scheduler: Literal["constant", "cosine"] = "cosine"
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.0


class RL(Stage):
    algorithm: Literal["grpo", "ppo"] = "grpo"
    critic_model: ModelRef | None = None
    critic_lr: Annotated[float, Field(gt=0, le=1)] = 1e-5
    reward_function: ShellPath | None = None
    reward_function_name: Word = "compute_score"
    train_batch_size: PositiveInt
    max_prompt_length: PositiveInt
    max_response_length: PositiveInt
    rollout_n: PositiveInt
    ppo_mini_batch_size: PositiveInt
    use_dynamic_bsz: bool = True
    ppo_max_token_len_per_gpu: PositiveInt
    ppo_micro_batch_size_per_gpu: PositiveInt
    log_prob_micro_batch_size_per_gpu: PositiveInt
    use_kl_loss: bool = True
    # rollout: vLLM's log-probs of the sampled tokens are PPO's old policy (verl's bypass mode);
    # recompute: the actor recomputes them in one more forward pass (verl's default)
    old_log_probs: Literal["rollout", "recompute"] = "recompute"
    rollout_correction: RolloutCorrection | None = None  # absent: none (the drift is logged either way)
    kl_loss_coef: Annotated[float, Field(ge=0)] = 0.001
    entropy_coeff: Annotated[float, Field(ge=0)] = 0.0
    rollout_tp: PositiveInt
    gpu_memory_utilization: Annotated[float, Field(gt=0, lt=1)]


class Evaluation(Section):
    """llm-bridge eval: HLE (text-only) and Do-Not-Answer, predictions by vLLM on one node, an LLM judge over HTTP."""

    results: ShellPath = "~/eval"
    hle_questions: ShellPath = "~/data/hle/test.parquet"
    dna_questions: ShellPath = "~/data/do_not_answer/do_not_answer_en.csv"
    judge_model: Word = "o3-mini-2025-01-31"
    judge_url: Annotated[str, AfterValidator(_url)] | None = None
    judge_api_key_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = "OPENAI_API_KEY"
    # The official protocols unless changed here; README_single_node_SFT_PPO.md 1-7 gives each reason.
    sampling: Literal["official", "model"] = "official"
    hle_max_response_length: PositiveInt | Literal["model"] = "model"
    dna_max_response_length: PositiveInt | Literal["auto", "model"] = "auto"
    truncated: Literal["judge", "wrong"] = "judge"
    max_model_len: PositiveInt | None = None
    tensor_parallel_size: PositiveInt = 1


class TeamConfig(Section):
    slurm: Slurm
    environment: Environment
    paths: Paths
    network: Network = Network()
    ray: Ray = Ray()
    wandb: Wandb
    huggingface: HuggingFace
    sft: SFT
    rl: RL
    evaluation: Evaluation = Evaluation()
