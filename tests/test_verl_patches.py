"""llm_bridge.verl_patches: the chunked label log-probs equal log_softmax + gather, values and gradients."""

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
