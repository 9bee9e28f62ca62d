"""Fast random initialization for the benchmarks' weight-free Qwen3 models (benchmarks/common.py).

`from_pretrained` initializes every weight missing from the checkpoint with Tensor.normal_, which on the
CPU draws from one serial generator: about 150 s per 32B parameters, more than the run it precedes.
On PYTHONPATH only for those models (sft_bench.py, grpo_bench.py), this normal_ draws one random block
of 2**20 values per call and tiles it through the tensor: same mean and std, a copy's speed. Speed
benchmarks do not depend on the values; a router (128 x 2048 for Qwen3-30B-A3B) is under one block,
so expert routing stays random.
"""

import torch

_BLOCK = 1 << 20
_normal = torch.Tensor.normal_


def _tiled_normal_(self, mean=0.0, std=1.0, *, generator=None):
    n = self.numel()
    if self.device.type != "cpu" or n <= _BLOCK or not self.is_contiguous():
        return _normal(self, mean, std, generator=generator)
    with torch.no_grad():
        block = _normal(torch.empty(_BLOCK, dtype=self.dtype), mean, std, generator=generator)
        flat, whole = self.view(-1), n - n % _BLOCK
        flat[:whole].view(-1, _BLOCK).copy_(block)
        flat[whole:].copy_(block[: n - whole])
    return self


torch.Tensor.normal_ = _tiled_normal_
