"""llm_bridge.verl_patches: the chunked label log-probs equal log_softmax + gather, values and gradients."""

import sys

import pytest
import torch

from llm_bridge import verl_patches


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
from llm_bridge import verl_patches
verl_patches.apply()
assert not [m for m in sys.modules if m.startswith("verl")], "the hook imported verl"
torch.cuda.is_available, torch.cuda.device_count = real
from verl.utils import torch_functional  # as verl's worker code does later, once it has its GPU
assert torch_functional.logprobs_from_logits_v2 is verl_patches.label_logprobs
print("ok")
"""


def test_ray_setup_hook_leaves_cuda_alone_until_verl_is_imported():
    """Ray runs the hook (apply) in each worker before it sets that worker's CUDA_VISIBLE_DEVICES. A CUDA
    query there fixes the devices the process sees: on a 2-GPU H100 node both GRPO ranks took GPU 0
    (NCCL "Duplicate GPU detected"). The hook must only arm the patches."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", HOOK_IN_A_FRESH_WORKER], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


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
