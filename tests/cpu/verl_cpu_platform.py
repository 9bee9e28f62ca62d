"""A CPU platform for verl 0.9.1, so the recipe's real training code runs on a machine without GPUs.

Test-only: loaded through verl's own hook (VERL_USE_EXTERNAL_MODULES=verl_cpu_platform) and selected
with VERL_PLATFORM=cpu; nothing on the cluster path imports it. verl has no CPU platform of its own
and falls back to "nvidia" (NCCL, CUDA device ids) on a CPU host.

Two runtime shims, both needed only without an accelerator:
  - verl builds the process-group backend as "cpu:gloo,<device>:<backend>", which with device "cpu"
    is "cpu:gloo,cpu:gloo" and torch rejects the duplicate: collapse it to "gloo".
  - the FSDP2 reference model uses CPUOffloadPolicy(pin_memory=True); pinning needs an accelerator.
"""

import os
import sys
import types
from contextlib import contextmanager

import torch
import torch.distributed
import torch.distributed.fsdp
from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry


def _zero(*args, **kwargs):
    return 0


def _noop(*args, **kwargs):
    return None


class _CPUDeviceModule(types.ModuleType):
    """The `torch.cuda`-shaped namespace verl calls through get_torch_device(): torch.cpu plus no-ops."""

    def __init__(self):
        super().__init__("verl_cpu_device")
        for name in ("Stream", "Event", "stream", "current_stream", "synchronize", "is_available", "device_count"):
            setattr(self, name, getattr(torch.cpu, name))
        self.current_device = lambda: "cpu"
        self.set_device = _noop
        self.empty_cache = _noop
        self.ipc_collect = _noop
        self.set_per_process_memory_fraction = _noop
        self.reset_peak_memory_stats = _noop
        self.manual_seed = torch.manual_seed
        self.manual_seed_all = torch.manual_seed
        self.get_rng_state = torch.get_rng_state
        self.set_rng_state = torch.set_rng_state
        self.get_device_name = lambda *a, **k: "cpu"
        self.mem_get_info = lambda *a, **k: (8 << 30, 8 << 30)
        for name in ("memory_allocated", "memory_reserved", "max_memory_allocated", "max_memory_reserved"):
            setattr(self, name, _zero)

    def __getattr__(self, name):
        raise AttributeError(f"verl_cpu_platform: the CPU device module has no '{name}'")


_DEVICE_MODULE = _CPUDeviceModule()


@PlatformRegistry.register(platform="cpu")
class PlatformCPU(PlatformBase):
    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self):
        return _DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check=False) -> bool:
        return os.environ.get("VERL_PLATFORM", "").lower() == "cpu"

    def current_device(self):
        # verl uses this as a device spec (`.to(get_device_id())`, FSDP device_id), so it must name the CPU.
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index) -> None:
        return None

    def synchronize(self, device_index=None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0):
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        # Ray nodes are started with num_gpus=N on CPU machines, so placement groups keep verl's GPU shape.
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"]

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self):
        return None


_init_process_group = torch.distributed.init_process_group


def _init_process_group_cpu(*args, backend=None, **kwargs):
    if isinstance(backend, str) and "," in backend:
        devices = {part.split(":")[0] for part in backend.split(",")}
        if devices == {"cpu"}:
            backend = "gloo"
    return _init_process_group(*args, backend=backend, **kwargs)


class _UnpinnedCPUOffloadPolicy(torch.distributed.fsdp.CPUOffloadPolicy):
    def __init__(self, pin_memory: bool = True):
        super().__init__(pin_memory=False)


if os.environ.get("VERL_PLATFORM", "").lower() == "cpu":
    torch.distributed.init_process_group = _init_process_group_cpu
    torch.distributed.fsdp.CPUOffloadPolicy = _UnpinnedCPUOffloadPolicy
    for module_name in ("verl.utils.fsdp_utils", "verl.workers.engine.fsdp.transformer_impl"):
        if module_name in sys.modules:
            sys.modules[module_name].CPUOffloadPolicy = _UnpinnedCPUOffloadPolicy
