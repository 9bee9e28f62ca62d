"""Workarounds for verl 0.9.1 and the kernels it runs, applied by the recipe's entrypoints
(llm_bridge.job.verl_sft, llm_bridge.job.verl_ppo).

1. Label log-probs without flash-attn. verl computes each token's log-prob with flash-attn's Triton
cross-entropy when flash-attn is installed; otherwise it falls back to `logprobs_from_logits_v2`,
which loops in Python over every token (one log_softmax kernel per row, forward and backward).
With 8k tokens per micro-batch that loop is most of the step: SFT of a 0.5B model ran at 2% MFU on
an H100 (docs/benchmarks.md). This replacement does the same arithmetic in chunks of rows and keeps
only the logits for the backward pass, as flash-attn's kernel does: the memory stays that of the
logits, the kernel count drops from O(tokens) to O(tokens / CHUNK).

2. Rollout outputs only when a response is finished. verl's vLLM server sends each response as its own
request with vLLM's default output kind, CUMULATIVE, and keeps only the last output. vLLM then builds a
new output object for all 256 running requests at every decode step and wakes each waiting coroutine,
in one Python process: the same engine made 13.3k tokens/s that way and 19.3k with FINAL_ONLY on an
H100 (benchmarks/vllm_bench.py, docs/benchmarks.md). The patch asks for FINAL_ONLY; the tokens
and log-probs verl reads are the same. Only the synchronous trainer (main_ppo) is meant: verl's
partial-rollout abort waits for a request's first output, which FINAL_ONLY sends only at the end.
Turning vLLM's detokenizing off as well (verl reads only token ids) made no measurable difference
(16.3-16.6k tokens/s against 15.4-17.3k), so it stays on.

3. Sequence boundaries computed once per micro-batch, not three times per layer. verl packs a
micro-batch into one row and passes only position_ids; transformers' flash-attention path then
re-derives the boundaries in every attention layer of every forward (`_is_packed_sequence`, a
`nonzero`, a `max` turned into an int), and each of the three waits for the GPU: 24 layers x 3
micro-batches x 3 = 216 host-device syncs in a 0.5B SFT step, each one draining the GPU's queue. The
patch adds the boundaries (`cu_seq_lens_q/k`, `max_length_q/k`, transformers' own padding-free
kwargs) to the model inputs, from the nested tensor's offsets, with one sync per micro-batch. SFT and
the GRPO actor share this code (verl's FSDP engine), so both get it.

4. The trainer notices finished rollouts within 0.2 s, not 2 s. verl's V1 trainer (main_ppo's default)
takes each step's batch from its replay buffer, which looks for finished trajectories every 2.0 s
(`ReplayBuffer.poll_interval`, not in the config). So `timing_s/gen` comes in steps of 2 s: every GRPO
step logged on an H100 read 12.1, 14.1, 16.1 or 18.1 s, and a step waits 1 s on average, 2 s at worst,
after vLLM is done. On the CPU pipeline gen went from 2.02 s to 0.85-1.03 s (docs/benchmarks.md).
Only the synchronous trainer's buffer is changed: the separate-async trainer also reads the interval
to decide whether the rollout sat idle.

5. Liger's RoPE on its Triton kernel. liger-kernel 0.8.5 runs RoPE with a CuTe DSL kernel on Hopper
wherever nvidia-cutlass-dsl is installed (vLLM 0.24 requires it), for heads of 128 or more (Qwen2.5
1.5B and 7B; 0.5B's are 64) in micro-batches of 131,072 head-rows or more. That kernel is compiled
for each sequence length, and a packed micro-batch has a new length nearly every time: 25 steps of
1.5B SFT on an H100 spent 20 of their 70 s compiling (py-spy) and ran at MFU 0.18-0.23; on Triton,
which compiles once, 0.43-0.44 (docs/benchmarks.md). Liger reads LIGER_KERNEL_IMPL_ROPE at every
call, so a value set before the job wins.

6. MoE experts without transformers' per-element overhead. transformers 5's grouped_mm experts forward
(Qwen3-MoE, DeepSeek-V3) spends more GPU time masking, multiplying and scatter-adding every routed row
than in its grouped GEMMs, and its gather's backward waits on the CPU. llm_bridge.job.moe_experts has the
measurements and a forward with the same GEMMs and gathers both ways; this patch installs it under
transformers' name for its default, "grouped_mm", so the trainer's model runs it (vLLM has its own kernels).

7. LoRA weights found under FSDP1. PEFT 0.21 picks an adapter's entries of a state dict by module path
(`_get_tuner_state_dict_key_prefixes`) and strips only a leading `_fsdp_wrapped_module.`. verl's FSDP1
engine wraps every decoder layer (and LoRA module) in its own unit, so the paths keep inner
`_fsdp_wrapped_module.` segments that the state dict's keys do not, and verl's layered summon passes a
unit's keys relative to the unit. Either way `get_peft_model_state_dict` returns nothing: the GRPO actor
(`strategy: fsdp`, the recipe's default) sent vLLM an empty adapter and vLLM stopped at the first weight
sync (StopIteration in `_create_merged_loras_inplace`, H200). The patch keeps PEFT's answer when it has
one and otherwise selects the adapter's `lora_*` entries by name, as PEFT did before 0.21 and as verl
expects. FSDP2 (no wrapper modules) never needed it. PEFT 0.22 strips the wrapper names at any depth
(`remove_torch_wrapper_names`) and finds the full summon's entries itself: there the patch does nothing for
`collect_lora_params`; verl's layered summon still finds nothing under FSDP1.

8. The rollout's drift in every run's metrics. PPO's ratio divides by the old policy's probability. With
`old_log_probs: rollout` (verl's bypass mode) that is vLLM's bf16 log-prob, and verl 0.9.1's V1 trainer then
logs nothing that shows how far it is from the actor's own (its `rollout_corr/` metrics come only from the
recomputed old log-probs, and the actor-side function meant for bypass mode,
`compute_rollout_corr_metrics_from_logprobs`, is never called). The actor's first mini-batch of a step runs
at the weights vLLM sampled with, so its log-probs against the rollout's are exactly that drift. The patch
logs verl's own off-policy metrics of them (`compute_offpolicy_metrics`: KL, K3 KL, chi-squared, the
perplexities) as `actor/rollout_drift/*` in every mode, and the K3 KL over spans of response-token positions
(`k3_kl_tokens_0_to_256` ... `k3_kl_tokens_from_16384`: the drift is reported to grow with length), at the cost of
a few host syncs per step. The gradient is untouched.

Not a workaround, and opt-in (for benchmarks): BRIDGE_COMPILE_LAYERS=1 compiles each decoder layer
(torch.compile, dynamic shapes) when verl's FSDP engine builds the model, before FSDP wraps it, with the
flash-attention call left eager. A 0.5B SFT step is bound by the CPU launching ~2,000 kernels per
micro-batch, and fusing a layer's elementwise work would launch fewer. Measured on H100s it does not pay
(docs/benchmarks.md): with Liger it crashes in Dynamo; without Liger whole layers trace only under
engine.use_orig_params=True, and then ran at MFU 0.24, below the default's 0.31-0.43 on every H100 lease.
So it is no default.
"""

import functools
import importlib.abc
import importlib.util
import os
import re
import sys

import torch

from llm_bridge.job import cudnn_attention, partial_recompute

CHUNK = 4096  # rows per chunk: 4096 x 151,936 vocabulary x 4 bytes = 2.5 GB of float32 at a time


class LabelLogProbs(torch.autograd.Function):
    """log_softmax(logits)[label] for 2-D logits, in float32, chunked over rows."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for start in range(0, logits.shape[0], CHUNK):
            lse[start:start + CHUNK] = torch.logsumexp(logits[start:start + CHUNK].float(), dim=-1)
        picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1).float()
        ctx.save_for_backward(logits, labels, lse)
        return picked - lse

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, labels, lse = ctx.saved_tensors
        grad_logits = torch.empty_like(logits)
        for start in range(0, logits.shape[0], CHUNK):
            rows = slice(start, start + CHUNK)
            g = grad[rows].float().unsqueeze(-1)
            chunk = torch.exp(logits[rows].float() - lse[rows].unsqueeze(-1)).mul_(-g)  # d/dx = onehot - softmax
            chunk.scatter_add_(-1, labels[rows].unsqueeze(-1), g)
            grad_logits[rows] = chunk.to(logits.dtype)
        return grad_logits, None


def label_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    shape = labels.shape
    return LabelLogProbs.apply(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)).view(shape)


ROLLOUT_SERVER = "verl.workers.rollout.vllm_rollout.vllm_async_server"


def final_only_outputs(server_module, final_only=None) -> None:
    """Make the server module's SamplingParams(...) default to output_kind=FINAL_ONLY."""
    if getattr(server_module.SamplingParams, "bridge_final_only", False):
        return
    if final_only is None:
        from vllm.sampling_params import RequestOutputKind

        final_only = RequestOutputKind.FINAL_ONLY
    make = server_module.SamplingParams

    def sampling_params(*args, **kwargs):
        kwargs.setdefault("output_kind", final_only)
        return make(*args, **kwargs)

    sampling_params.bridge_final_only = True
    server_module.SamplingParams = sampling_params
    print("llm_bridge: vLLM rollout sends each response once, when finished (llm_bridge.job.verl_patches)", flush=True)


class AfterImport(importlib.abc.MetaPathFinder):
    """Calls patch(module) once `name` has been imported: a worker pays for no import it would not make
    (verl's rollout server means vLLM), and none happens before Ray has given the worker its GPU."""

    def __init__(self, name: str, patch):
        self.name, self.patch = name, patch

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once, and so that find_spec below finds the real module
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        load, patch = spec.loader.exec_module, self.patch

        def exec_module(module):
            load(module)
            patch(module)

        spec.loader.exec_module = exec_module
        return spec


def patch_when_imported(name: str, patch) -> None:
    if name in sys.modules:
        patch(sys.modules[name])
    elif not any(isinstance(f, AfterImport) and (f.name, f.patch) == (name, patch) for f in sys.meta_path):
        sys.meta_path.insert(0, AfterImport(name, patch))


TORCH_FUNCTIONAL = "verl.utils.torch_functional"


def chunked_label_logprobs(torch_functional) -> None:
    if torch_functional.logprobs_from_logits_v2 is not label_logprobs:
        torch_functional.logprobs_from_logits_v2 = label_logprobs
        if not torch_functional.FLAH_ATTN_CROSS_ENTROPY_LOSS_AVAILABLE:
            print("llm_bridge: no flash-attn: verl's label log-probs use the chunked kernel (llm_bridge.job.verl_patches)",
                  flush=True)


FSDP_ENGINE = "verl.workers.engine.fsdp.transformer_impl"
FLASH_VARLEN = ("flash_attention_2", "flash_attention_3")  # transformers' _flash_attention_forward


def add_varlen_kwargs(config, micro_batch, model_inputs: dict) -> None:
    """transformers' padding-free flash-attention kwargs, only where the packed row is exactly the nested
    sequences back to back: flash attention, remove-padding (no mask), text only, nothing appended (a
    static bucket or sequence-parallel pad changes the row's length). sdpa_cudnn (llm_bridge.job.cudnn_attention)
    slices the row on the host: it gets the boundaries there."""
    input_ids = micro_batch["input_ids"]
    attention = getattr(config, "_attn_implementation", None)
    if not (attention in (*FLASH_VARLEN, cudnn_attention.NAME)
            and set(model_inputs) == {"input_ids", "attention_mask", "position_ids"}
            and model_inputs["attention_mask"] is None and model_inputs["position_ids"].dim() == 2
            and input_ids.is_nested and model_inputs["input_ids"].shape == (1, input_ids.values().shape[0])):
        return
    offsets = input_ids.offsets()
    if attention == cudnn_attention.NAME:
        model_inputs.update(cu_seq_lens_q=offsets.cpu())  # the only sync
        return
    cu_seqlens = offsets.to(torch.int32)
    max_length = int(offsets.diff().max())  # the only sync: an int, as flash-attn's varlen call wants
    model_inputs.update(cu_seq_lens_q=cu_seqlens, cu_seq_lens_k=cu_seqlens, max_length_q=max_length, max_length_k=max_length)


def packed_sequence_boundaries(engine_module) -> None:
    cls = engine_module.FSDPEngineWithLMHead
    if getattr(cls.prepare_model_inputs, "bridge_varlen", False):
        return
    prepare = cls.prepare_model_inputs

    def prepare_model_inputs(self, micro_batch):
        model_inputs, output_args = prepare(self, micro_batch)
        add_varlen_kwargs(getattr(self.module, "config", None), micro_batch, model_inputs)
        return model_inputs, output_args

    prepare_model_inputs.bridge_varlen = True
    cls.prepare_model_inputs = prepare_model_inputs


def flash_attention_outside_compile() -> None:
    """Run transformers' flash-attention call eagerly inside compiled layers. Traced, flash_attn's varlen
    kernel fails on a GPU: Dynamo cannot lift its symbolic max_seqlen (`s52 + 1`) to a graph input."""
    try:
        from transformers.integrations import flash_attention
    except ImportError:
        return
    forward = flash_attention._flash_attention_forward  # verl's Ulysses/remove-padding version by now
    if not getattr(forward, "bridge_eager", False):
        forward = torch.compiler.disable(forward)
        forward.bridge_eager = True
        flash_attention._flash_attention_forward = forward


def compile_decoder_layers(model) -> int:
    """torch.compile each decoder layer of a transformers causal LM in place; returns how many."""
    layers = getattr(getattr(model, "model", None), "layers", None) or []
    flash_attention_outside_compile()
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def compiled_decoder_layers(engine_module) -> None:
    cls = engine_module.FSDPEngine
    if getattr(cls._build_module, "bridge_compile", False):
        return
    build = cls._build_module

    def _build_module(self):
        module = build(self)
        compiled = compile_decoder_layers(module)
        print(f"llm_bridge: BRIDGE_COMPILE_LAYERS=1: compiled {compiled} decoder layers", flush=True)
        config = self.engine_config
        if config.strategy == "fsdp" and not config.use_orig_params:
            print("llm_bridge: BRIDGE_COMPILE_LAYERS=1: Dynamo traces FSDP1 layers only with "
                  "engine.use_orig_params=True; without it each layer runs eager, with pieces compiled.", flush=True)
        return module

    _build_module.bridge_compile = True
    cls._build_module = _build_module


REPLAY_BUFFER = "verl.trainer.ppo.v1.replay_buffer"
REPLAY_POLL_S = 0.2  # one poll is one TransferQueue kv_list over ZMQ: 5 a second cost nothing next to a step


def frequent_replay_polls(replay_module) -> None:
    cls = replay_module.ReplayBuffer
    if getattr(cls.__init__, "bridge_poll", False):
        return
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if self.trainer_mode == "sync":
            self.poll_interval = min(self.poll_interval, REPLAY_POLL_S)

    __init__.bridge_poll = True
    cls.__init__ = __init__


LIGER = "liger_kernel"


def liger_rope_on_triton(liger_module) -> None:
    os.environ.setdefault("LIGER_KERNEL_IMPL_ROPE", "nvidia-triton")


TRANSFORMERS_MODELING = "transformers.modeling_utils"


def attention_implementations(modeling_utils) -> None:
    cudnn_attention.install()


TRANSFORMERS_MOE = "transformers.integrations.moe"


def grouped_experts(moe_module) -> None:
    from llm_bridge.job import moe_experts

    moe_experts.install()


PEFT_STATE_DICT = "verl.utils.fsdp_utils"
LORA_ENTRY = re.compile(r"\.lora_(A|B|embedding_A|embedding_B|magnitude_vector)(\.|$)")


def lora_entries_by_name(state_dict: dict, adapter_name: str) -> dict:
    """An adapter's LoRA entries with the adapter's name taken out of each key, as PEFT writes them."""
    picked = {}
    for key, value in state_dict.items():
        if not LORA_ENTRY.search(key):
            continue
        if key.endswith(f".{adapter_name}"):
            picked[key.removesuffix(f".{adapter_name}")] = value
        elif f".{adapter_name}." in key:
            picked[key.replace(f".{adapter_name}.", ".", 1)] = value
    return picked


def adapter_state_dict_under_fsdp1(fsdp_utils) -> None:
    import peft.utils.save_and_load as save_and_load

    if getattr(save_and_load.get_peft_model_state_dict, "bridge_fsdp1", False):
        fsdp_utils.get_peft_model_state_dict = save_and_load.get_peft_model_state_dict
        return
    original = save_and_load.get_peft_model_state_dict

    @functools.wraps(original)
    def get_peft_model_state_dict(model, state_dict=None, adapter_name="default", *args, **kwargs):
        found = original(model, state_dict, adapter_name, *args, **kwargs)
        config = model.peft_config[adapter_name]
        if found or getattr(config.peft_type, "value", config.peft_type) != "LORA":
            return found
        return lora_entries_by_name(model.state_dict() if state_dict is None else state_dict, adapter_name)

    get_peft_model_state_dict.bridge_fsdp1 = True
    save_and_load.get_peft_model_state_dict = get_peft_model_state_dict  # collect_lora_params imports it when called
    fsdp_utils.get_peft_model_state_dict = get_peft_model_state_dict  # layered_summon_lora_params' module-level name


ENGINE_WORKERS = "verl.workers.engine_workers"


def rollout_drift(model_output: dict, data) -> dict:
    """verl's off-policy metrics of a micro-batch's actor log-probs against its rollout's, averaged like the policy
    loss's (the trainer adds `actor/` to each name); nothing where the rollout recorded no log-probs."""
    if "log_probs" not in model_output or "rollout_log_probs" not in data.keys():
        return {}
    from verl.trainer.ppo.rollout_corr_helper import compute_offpolicy_metrics
    from verl.utils.metric import AggregationType, Metric
    from verl.workers.utils.padding import no_padding_2_padding

    actor = no_padding_2_padding(model_output["log_probs"], data).detach().float()
    padded = data.select("response_mask", "rollout_log_probs").to_padded_tensor()
    mask = padded["response_mask"].float()
    if not mask.any():
        return {}
    rollout = padded["rollout_log_probs"].float()
    metrics = {**compute_offpolicy_metrics(actor, rollout, mask), **drift_by_position(actor, rollout, mask)}
    return {f"rollout_drift/{key}": Metric(AggregationType.MEAN, value) for key, value in metrics.items()}


# The drift is reported to grow with the response's length: it is also logged over these spans of response-token
# positions (k3_kl_tokens_0_to_256, ..., k3_kl_tokens_from_16384)
DRIFT_SPANS = ((0, 256), (256, 1024), (1024, 4096), (4096, 16384), (16384, None))


def drift_by_position(actor: torch.Tensor, rollout: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """verl's K3 KL (as compute_offpolicy_metrics' k3_kl) over the response tokens of each DRIFT_SPANS span that
    this micro-batch reaches."""
    log_ratio = actor - rollout
    k3 = torch.where(mask.bool(), torch.exp(log_ratio) - log_ratio - 1, 0.0)  # padding may hold anything
    position = torch.arange(mask.shape[-1], device=mask.device)
    metrics = {}
    for lo, hi in DRIFT_SPANS:
        tokens = mask * ((position >= lo) & (position < (hi or mask.shape[-1])))
        if tokens.any():
            name = f"k3_kl_tokens_{lo}_to_{hi}" if hi else f"k3_kl_tokens_from_{lo}"
            metrics[name] = ((k3 * tokens).sum() / tokens.sum()).item()
    return metrics


def rollout_drift_metrics(engine_workers) -> None:
    worker = engine_workers.TrainingWorker
    if getattr(worker.train_batch, "bridge_drift", False):
        return
    train_mini_batch, train_batch = worker.train_mini_batch, worker.train_batch

    @functools.wraps(train_mini_batch)
    def measured_train_mini_batch(self, data):
        self.bridge_drift_due = True  # the next train_batch is the step's first mini-batch
        return train_mini_batch(self, data)

    @functools.wraps(train_batch)
    def measured_train_batch(self, data):
        loss_fn = self.loss_fn
        is_policy_loss = getattr(loss_fn, "func", None) is engine_workers.ppo_loss  # not the critic's, nor distillation
        if not (getattr(self, "bridge_drift_due", False) and is_policy_loss):
            return train_batch(self, data)
        self.bridge_drift_due = False

        def loss_and_drift(model_output, data, **kwargs):
            loss, metrics = loss_fn(model_output=model_output, data=data, **kwargs)
            return loss, {**metrics, **rollout_drift(model_output, data)}

        self.loss_fn = loss_and_drift
        try:
            return train_batch(self, data)
        finally:
            self.loss_fn = loss_fn

    measured_train_batch.bridge_drift = True
    worker.train_mini_batch, worker.train_batch = measured_train_mini_batch, measured_train_batch


PATCHES = {  # name: (the module it patches, the patch)
    "chunked_label_logprobs": (TORCH_FUNCTIONAL, chunked_label_logprobs),
    "final_only_outputs": (ROLLOUT_SERVER, final_only_outputs),
    "packed_sequence_boundaries": (FSDP_ENGINE, packed_sequence_boundaries),
    "frequent_replay_polls": (REPLAY_BUFFER, frequent_replay_polls),
    "liger_rope_on_triton": (LIGER, liger_rope_on_triton),
    "grouped_experts": (TRANSFORMERS_MOE, grouped_experts),
    "adapter_state_dict_under_fsdp1": (PEFT_STATE_DICT, adapter_state_dict_under_fsdp1),
    "rollout_drift_metrics": (ENGINE_WORKERS, rollout_drift_metrics),
}


def apply() -> None:
    """Patch verl (and Liger, patch 5) in this process. Idempotent. Ray runs it in every worker process of a PPO job
    (runtime_env worker_process_setup_hook). BRIDGE_VERL_PATCHES=0 leaves verl as released (attn_implementation
    sdpa_cudnn and recompute_layers stay available: they are team.yaml values, not patches), and
    BRIDGE_VERL_PATCHES_OFF=name,... leaves out the patches named in PATCHES (both for benchmarks).

    Every patch waits for its module's import. Ray runs the hook when a worker process starts, before it
    gives the process its GPU (CUDA_VISIBLE_DEVICES): importing verl here would run verl.utils.device's
    torch.cuda.is_available(), CUDA would fix the devices it sees, and every rank would take GPU 0."""
    patch_when_imported(TRANSFORMERS_MODELING, attention_implementations)
    patch_when_imported(TRANSFORMERS_MODELING, partial_recompute.install)  # team.yaml's recompute_layers
    if os.environ.get("BRIDGE_VERL_PATCHES", "1") == "0":
        return
    off = {name.strip() for name in os.environ.get("BRIDGE_VERL_PATCHES_OFF", "").split(",") if name.strip()}
    if off - PATCHES.keys():
        raise ValueError(f"BRIDGE_VERL_PATCHES_OFF names no patch: {', '.join(sorted(off - PATCHES.keys()))}. "
                         f"Fix: name some of {', '.join(PATCHES)}, comma-separated")
    for name, (module, patch) in PATCHES.items():
        if name not in off:
            patch_when_imported(module, patch)
    if os.environ.get("BRIDGE_COMPILE_LAYERS") == "1":
        patch_when_imported(FSDP_ENGINE, compiled_decoder_layers)
