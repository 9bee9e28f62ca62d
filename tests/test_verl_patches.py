"""llm_bridge.job.verl_patches: each workaround does what verl did, faster, and apply() arms exactly the ones asked for."""

import importlib.metadata
import math
import os
import sys

import pytest
import torch
from packaging import version

from llm_bridge.job import verl_patches


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_label_logprobs_match_log_softmax(monkeypatch, dtype, tol):
    monkeypatch.setattr(verl_patches, "CHUNK", 7)  # several chunks and a ragged last one
    torch.manual_seed(0)
    logits = (torch.randn(3, 11, 50) * 4).to(dtype).requires_grad_()
    labels = torch.randint(0, 50, (3, 11))
    weights = torch.randn(3, 11)

    got = verl_patches.label_logprobs(logits, labels)
    (got * weights).sum().backward()
    grad, logits.grad = logits.grad.clone(), None

    reference = torch.log_softmax(logits.double(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    (reference * weights.double()).sum().backward()
    assert got.dtype == torch.float32 and got.shape == labels.shape
    assert torch.allclose(got.double(), reference, atol=tol)
    assert torch.allclose(grad.double(), logits.grad.double(), atol=tol)


def test_verl_uses_it_once_applied():
    from verl.utils import torch_functional

    verl_patches.apply()
    logits, labels = torch.randn(5, 9), torch.randint(0, 9, (5,))
    if not torch_functional.FLAH_ATTN_CROSS_ENTROPY_LOSS_AVAILABLE:
        expected = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(torch_functional.logprobs_from_logits(logits, labels), expected, atol=1e-6)
    assert torch_functional.logprobs_from_logits_v2 is verl_patches.label_logprobs


HOOK_IN_A_FRESH_WORKER = """
import sys, torch
def cuda_touched(*args, **kwargs):
    raise SystemExit("the setup hook asked CUDA for its devices before Ray set CUDA_VISIBLE_DEVICES")
real = torch.cuda.is_available, torch.cuda.device_count
torch.cuda.is_available = torch.cuda.device_count = cuda_touched
from llm_bridge.job import verl_patches
verl_patches.apply()
assert not [m for m in sys.modules if m.startswith("verl")], "the hook imported verl"
torch.cuda.is_available, torch.cuda.device_count = real
from verl.utils import torch_functional  # as verl's worker code does later, once it has its GPU
assert torch_functional.logprobs_from_logits_v2 is verl_patches.label_logprobs
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
assert FSDPEngineWithLMHead.prepare_model_inputs.bridge_varlen
from verl.trainer.ppo.v1 import replay_buffer  # in the TaskRunner, when the trainer builds its buffer
assert replay_buffer.ReplayBuffer.__init__.bridge_poll
print("ok")
"""


def run_fresh(script, **env):
    """Run script in a new Python process: patches change verl's modules for the rest of a process.
    A variable given as None is left out of its environment."""
    import subprocess

    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in {**os.environ, **env}.items() if v is not None})


def test_ray_setup_hook_leaves_cuda_alone_until_verl_is_imported():
    """Ray runs the hook (apply) in each worker before it sets that worker's CUDA_VISIBLE_DEVICES. A CUDA
    query there fixes the devices the process sees: on a 2-GPU H100 node both GRPO ranks took GPU 0
    (NCCL "Duplicate GPU detected"). The hook must only arm the patches."""
    done = run_fresh(HOOK_IN_A_FRESH_WORKER)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


ONE_PATCH_OFF = """
from llm_bridge.job import verl_patches
verl_patches.apply()
from verl.utils import torch_functional
from verl.trainer.ppo.v1 import replay_buffer
print(torch_functional.logprobs_from_logits_v2 is verl_patches.label_logprobs,
      getattr(replay_buffer.ReplayBuffer.__init__, "bridge_poll", False))
"""


def test_one_patch_can_be_left_out_for_a_benchmark():
    done = run_fresh(ONE_PATCH_OFF, BRIDGE_VERL_PATCHES_OFF="frequent_replay_polls")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1].split() == ["True", "False"]  # the others still apply


LIGER_ROPE = """
import os
from llm_bridge.job import verl_patches
verl_patches.apply()
before = os.environ.get("LIGER_KERNEL_IMPL_ROPE")
import liger_kernel
print(before, os.environ.get("LIGER_KERNEL_IMPL_ROPE"))
"""


@pytest.mark.parametrize("env, printed", [
    ({}, "None nvidia-triton"),
    ({"LIGER_KERNEL_IMPL_ROPE": "nvidia-cutedsl"}, "nvidia-cutedsl nvidia-cutedsl"),  # a value set before wins
    ({"BRIDGE_VERL_PATCHES_OFF": "liger_rope_on_triton"}, "None None"),
])
def test_liger_rope_is_pinned_to_triton_once_liger_is_imported(tmp_path, env, printed):
    """Patch 5 (why: verl_patches' docstring). The CPU tests have no liger-kernel (it needs Triton), so an
    empty package of that name stands in: what is tested is that importing it sets the variable Liger reads."""
    (tmp_path / "liger_kernel").mkdir()
    (tmp_path / "liger_kernel" / "__init__.py").write_text("")
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    unset = {"LIGER_KERNEL_IMPL_ROPE": None, "BRIDGE_VERL_PATCHES_OFF": None}
    done = run_fresh(LIGER_ROPE, PYTHONPATH=path, **{**unset, **env})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == printed


COMPILE_ARMED = """
from llm_bridge.job import verl_patches
verl_patches.apply()
from verl.workers.engine.fsdp import transformer_impl as engine
print(getattr(engine.FSDPEngine._build_module, "bridge_compile", False),
      getattr(engine.FSDPEngineWithLMHead.prepare_model_inputs, "bridge_varlen", False))
"""


@pytest.mark.parametrize("flag, compiled", [("1", "True"), ("0", "False")])
def test_layer_compile_is_armed_only_when_asked_beside_the_boundaries_patch(flag, compiled):
    done = run_fresh(COMPILE_ARMED, BRIDGE_COMPILE_LAYERS=flag)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1].split() == [compiled, "True"]  # same module, both patches


@pytest.fixture
def flash_attention(monkeypatch):
    """transformers' flash-attention module, whose forward compile_decoder_layers wraps; restored afterwards."""
    from transformers.integrations import flash_attention

    monkeypatch.setattr(flash_attention, "_flash_attention_forward", flash_attention._flash_attention_forward)
    return flash_attention


def test_compiled_decoder_layers_give_the_eager_loss_and_gradients(flash_attention):
    import copy

    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    eager = Qwen2ForCausalLM(config)
    compiled = copy.deepcopy(eager)
    assert verl_patches.compile_decoder_layers(compiled) == 2
    assert all(layer._compiled_call_impl is not None for layer in compiled.model.layers)
    assert flash_attention._flash_attention_forward.bridge_eager  # traced, flash_attn's varlen call fails on GPU
    for length in (9, 13):  # a second length: dynamic shapes, no failure on a new packed length
        ids = torch.randint(0, 128, (1, length))
        losses = [model(input_ids=ids, labels=ids).loss for model in (eager, compiled)]
        for loss in losses:
            loss.backward()
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
    for (name, a), (_, b) in zip(eager.named_parameters(), compiled.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("strategy, orig_params, warned", [("fsdp", False, True), ("fsdp", True, False),
                                                          ("fsdp2", False, False)])
@pytest.mark.usefixtures("flash_attention")
def test_layer_compile_says_when_fsdp1_flat_parameters_keep_layers_eager(capsys, strategy, orig_params, warned):
    from types import SimpleNamespace

    class FSDPEngine:  # verl's engine, down to what the patch touches
        engine_config = SimpleNamespace(strategy=strategy, use_orig_params=orig_params)

        def _build_module(self):
            return torch.nn.Module()

    verl_patches.compiled_decoder_layers(SimpleNamespace(FSDPEngine=FSDPEngine))
    FSDPEngine()._build_module()
    assert ("engine.use_orig_params=True" in capsys.readouterr().out) == warned


def test_an_unknown_patch_name_is_an_error_that_lists_the_names():
    done = run_fresh(ONE_PATCH_OFF, BRIDGE_VERL_PATCHES_OFF="frequent_replay_poll")
    assert done.returncode != 0
    assert "BRIDGE_VERL_PATCHES_OFF names no patch: frequent_replay_poll." in done.stderr
    assert "frequent_replay_polls" in done.stderr.split("Fix:")[1]


def replay_buffer(cls_name: str, trainer_mode: str):
    """verl's V1 replay buffer, built with the arguments the trainer passes (trainer_base._build_replay_buffer)."""
    from verl.trainer.ppo.v1 import replay_buffer as module

    verl_patches.frequent_replay_polls(module)
    verl_patches.frequent_replay_polls(module)  # apply() runs in every worker, more than once
    return module, getattr(module, cls_name)(
        trainer_mode=trainer_mode, trainer_config={}, max_off_policy_threshold=None, max_off_policy_strategy="drop",
        sampler_kwargs={}, refill_fn=lambda n: None)


def test_sync_trainer_looks_for_finished_rollouts_every_fifth_of_a_second(monkeypatch):
    module, buffer = replay_buffer("ReplayBuffer", "sync")
    slept = []
    monkeypatch.setattr(module.time, "sleep", slept.append)
    buffer._wait_for_next_poll("train", last_debug_time=0.0)  # what sample() calls while rollouts run
    assert slept == [verl_patches.REPLAY_POLL_S] and verl_patches.REPLAY_POLL_S < 2.0


def test_async_trainers_keep_verls_interval():
    """The separate-async trainer also reads poll_interval, to judge whether the rollout sat idle."""
    _, buffer = replay_buffer("ReplayBufferAsync", "separate_async")
    assert buffer.poll_interval == 2.0


FAKE_SERVER = """
class SamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs

def request(**sampling_params):
    return SamplingParams(max_tokens=3, **sampling_params)
"""


def test_final_only_is_patched_in_when_the_server_module_is_imported(tmp_path, monkeypatch):
    (tmp_path / "bridge_fake_server.py").write_text(FAKE_SERVER)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))

    def patch(module):
        verl_patches.final_only_outputs(module, final_only="FINAL_ONLY")

    verl_patches.patch_when_imported("bridge_fake_server", patch)
    verl_patches.patch_when_imported("bridge_fake_server", patch)  # apply() runs more than once
    hooks = [f for f in sys.meta_path if isinstance(f, verl_patches.AfterImport)]
    assert [f.name for f in hooks].count("bridge_fake_server") == 1

    import bridge_fake_server

    try:
        assert bridge_fake_server.request().kwargs == {"max_tokens": 3, "output_kind": "FINAL_ONLY"}
        assert bridge_fake_server.request(output_kind="DELTA").kwargs["output_kind"] == "DELTA"
        assert not any(getattr(f, "name", None) == "bridge_fake_server" for f in sys.meta_path)
        wrapped = bridge_fake_server.SamplingParams
        verl_patches.patch_when_imported("bridge_fake_server", patch)  # already imported: patched in place, once
        assert bridge_fake_server.SamplingParams is wrapped
    finally:
        del sys.modules["bridge_fake_server"]


def test_verl_server_still_builds_sampling_params_the_patched_way():
    """The patch replaces the server module's SamplingParams name; verl must still call it by that name and
    keep only the last output of each request. Read from the source: importing it needs vLLM."""
    from pathlib import Path

    import verl

    module = Path(verl.__file__).parent.parent.joinpath(*verl_patches.ROLLOUT_SERVER.split("."))
    source = module.with_suffix(".py").read_text()
    assert "from vllm import SamplingParams" in source
    assert "sampling_params = SamplingParams(max_tokens=max_tokens, **sampling_params)" in source
    assert "output_kind" not in source
    assert "async for output in generator:" in source and "final_res = output" in source


def packed_micro_batch(lengths: list[int]):
    """A micro-batch as verl's SFT and PPO engines get it: nested (jagged) sequences, no padding."""
    from verl.utils import tensordict_utils as tu
    from verl.utils.dataset.dataset_utils import DatasetPadMode

    def nested(rows):
        return torch.nested.as_nested_tensor(rows, layout=torch.jagged)

    return tu.get_tensordict(
        {"input_ids": nested([torch.randint(0, 100, (n,)) for n in lengths]),
         "position_ids": nested([torch.arange(n) for n in lengths])},
        non_tensor_dict={"temperature": 1.0, "use_remove_padding": True, "pad_mode": DatasetPadMode.NO_PADDING,
                         "use_fused_kernels": False})


def fsdp_engine(attn_implementation: str, pad_to_length=None):
    """verl's real FSDPEngineWithLMHead.prepare_model_inputs, on an engine holding only what it reads."""
    from types import SimpleNamespace

    from verl.workers.engine.fsdp import transformer_impl

    verl_patches.packed_sequence_boundaries(transformer_impl)
    engine = object.__new__(transformer_impl.FSDPEngineWithLMHead)
    engine.module = SimpleNamespace(config=SimpleNamespace(_attn_implementation=attn_implementation))
    engine.pad_to_length, engine.pad_to_length_bucket, engine.use_ulysses_sp = pad_to_length, pad_to_length, False
    return engine


def test_flash_attention_gets_the_boundaries_transformers_would_derive_in_every_layer():
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    inputs, _ = fsdp_engine("flash_attention_2").prepare_model_inputs(packed_micro_batch([5, 3, 9, 1]))

    (cu_q, cu_k), (max_q, max_k) = prepare_fa_kwargs_from_position_ids(inputs["position_ids"])
    assert inputs["cu_seq_lens_q"].tolist() == inputs["cu_seq_lens_k"].tolist() == cu_q.tolist() == [0, 5, 8, 17, 18]
    assert inputs["cu_seq_lens_q"].dtype == cu_q.dtype == torch.int32
    assert inputs["max_length_q"] == inputs["max_length_k"] == int(max_q) == 9
    assert type(inputs["max_length_q"]) is int  # an int: flash-attn's varlen call takes no tensor, no sync per layer


@pytest.mark.parametrize("attn_implementation, pad_to_length", [("sdpa", None), ("flex_attention", None),
                                                                ("flash_attention_2", 64)])
def test_no_boundaries_where_the_packed_row_is_not_just_the_sequences(attn_implementation, pad_to_length):
    """Other attentions take the boundaries from position_ids through their mask; a padded row (static
    bucket) has a tail that no offset describes: both keep verl's inputs as they are."""
    inputs, args = fsdp_engine(attn_implementation, pad_to_length).prepare_model_inputs(packed_micro_batch([5, 3, 9]))
    assert set(inputs) == {"input_ids", "attention_mask", "position_ids"}
    assert inputs["input_ids"].shape[-1] == 17 + args["pad_size"]


LORA_UNDER_FSDP1 = """
import os, torch, torch.distributed as dist
from llm_bridge.job import verl_patches
verl_patches.apply()
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["TEST_PORT"])
dist.init_process_group("gloo", rank=0, world_size=1)
from peft import LoraConfig, TaskType, get_peft_model
from peft.utils.save_and_load import get_peft_model_state_dict
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, MixedPrecision, ShardingStrategy
from transformers import Qwen3Config, Qwen3ForCausalLM
from verl.utils.fsdp_utils import collect_lora_params, get_fsdp_wrap_policy, layered_summon_lora_params
torch.manual_seed(0)
model = Qwen3ForCausalLM(Qwen3Config(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, head_dim=8, intermediate_size=64))
model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8, target_modules="all-linear",
                                         init_lora_weights=False))
reference = {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}
# as verl's FSDP1 engine wraps a LoRA model: a unit per decoder layer and per trainable module
fsdp = FSDP(model, auto_wrap_policy=get_fsdp_wrap_policy(model, config=None, is_lora=True), device_id=torch.device("cpu"),
            sharding_strategy=ShardingStrategy.FULL_SHARD, mixed_precision=MixedPrecision(param_dtype=torch.float32))
got = collect_lora_params(fsdp, layered_summon=False, base_sync_done=True)
same = sorted(got) == sorted(reference) and all(torch.equal(got[k].cpu(), reference[k]) for k in reference)
print(len(reference), len(got), same)
print("layered", len(layered_summon_lora_params(fsdp)))  # FSDP1's LoRA matrices are units of their own: never found
"""


# PEFT 0.22 strips FSDP's wrapper names at any depth (peft.utils.integrations.remove_torch_wrapper_names): from it on,
# verl's full summon finds the adapter without the patch too
PEFT_FINDS_IT = version.parse(importlib.metadata.version("peft")) >= version.parse("0.22")


@pytest.mark.parametrize("off, printed", [
    (None, ["28 28 True", "layered 0"]),
    ("adapter_state_dict_under_fsdp1", ["28 28 True" if PEFT_FINDS_IT else "28 0 False", "layered 0"])])
def test_verl_finds_the_lora_weights_of_an_fsdp1_model(off, printed):
    """Patch 7: what verl sends vLLM at each weight sync is the adapter PEFT reports for the unwrapped model: 2 layers
    x 7 modules x (A, B), the same values. Without the patch PEFT 0.21 finds nothing under FSDP1's nested units
    (what stopped vLLM on an H200); PEFT 0.22 does. verl's layer-by-layer sync (70B+) finds nothing under FSDP1
    either way, hence check's rl.strategy rule (tests/test_big_model_rules.py)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    done = run_fresh(LORA_UNDER_FSDP1, BRIDGE_VERL_PATCHES_OFF=off, BRIDGE_VERL_PATCHES=None, TEST_PORT=port)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-2:] == printed


def test_sdpa_cudnn_gets_the_boundaries_on_the_host():
    inputs, _ = fsdp_engine("sdpa_cudnn").prepare_model_inputs(packed_micro_batch([5, 3, 9, 1]))
    assert inputs["cu_seq_lens_q"].device.type == "cpu" and inputs["cu_seq_lens_q"].tolist() == [0, 5, 8, 17, 18]
    assert "max_length_q" not in inputs and "cu_seq_lens_k" not in inputs


@pytest.mark.parametrize("boundaries", ["cu_seq_lens_q", "position_ids"])
def test_sdpa_cudnn_attends_each_packed_sequence_alone(boundaries):
    """A packed row through sdpa_cudnn equals each sequence through transformers' sdpa on its own: logits and the
    weights' gradients (a Qwen3 with grouped key/value heads)."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    from llm_bridge.job import cudnn_attention

    cudnn_attention.install()
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, intermediate_size=128)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa_cudnn", dtype=torch.float32)
    lengths, cu = [5, 9, 3], [0, 5, 14, 17]
    ids = torch.randint(0, 100, (1, 17))
    kwargs = {"position_ids": torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)}
    if boundaries == "cu_seq_lens_q":
        kwargs["cu_seq_lens_q"] = torch.tensor(cu)

    def run():
        model.zero_grad()
        logits = model(input_ids=ids, **kwargs).logits if model.config._attn_implementation == "sdpa_cudnn" else \
            torch.cat([model(input_ids=ids[:, a:b]).logits for a, b in zip(cu, cu[1:])], dim=1)
        logits.square().mean().backward()
        return logits.detach(), model.model.layers[0].self_attn.k_proj.weight.grad.clone()

    packed, packed_grad = run()
    model.config._attn_implementation = "sdpa"
    alone, alone_grad = run()
    assert torch.allclose(packed, alone, atol=1e-5) and torch.allclose(packed_grad, alone_grad, atol=1e-6)
    model.config._attn_implementation = "sdpa_cudnn"
    padded = torch.ones_like(ids)
    padded[0, -2:] = 0
    with pytest.raises(ValueError, match="takes no padding mask. Fix: keep verl's remove-padding on"):
        model(input_ids=ids, attention_mask=padded)


def test_the_drift_is_also_logged_by_response_position():
    """verl_patches 8 splits the drift by response-token position (it is reported to grow with length): a span gets
    the K3 KL of its own tokens only, padding never counts (even where it holds inf), spans no token reaches are not
    logged, and over one span the figure is verl's own k3_kl."""
    from verl.trainer.ppo.rollout_corr_helper import compute_offpolicy_metrics

    mask = torch.zeros(2, 1100)
    mask[0, :1100], mask[1, :300] = 1, 1
    rollout = torch.full((2, 1100), -1.0)
    actor = rollout.clone()
    actor[:, 256:] += 0.1  # the actor departs from the rollout from token 256 on
    actor[1, 300:] = float("inf")  # padding
    drift = verl_patches.drift_by_position(actor, rollout, mask)
    k3 = math.exp(0.1) - 0.1 - 1
    assert drift.keys() == {"k3_kl_tokens_0_to_256", "k3_kl_tokens_256_to_1024", "k3_kl_tokens_1024_to_4096"}
    assert drift["k3_kl_tokens_0_to_256"] == 0
    assert drift["k3_kl_tokens_256_to_1024"] == pytest.approx(k3, rel=1e-4)
    assert drift["k3_kl_tokens_1024_to_4096"] == pytest.approx(k3, rel=1e-4)
    short = (actor[:, :256] + 0.05, rollout[:, :256], mask[:, :256])
    (one_span,) = verl_patches.drift_by_position(*short).values()
    assert one_span == pytest.approx(compute_offpolicy_metrics(*short)["k3_kl"], rel=1e-5)
