"""Gradient checkpointing on only some decoder layers (team.yaml `recompute_layers`).

With gradient checkpointing every decoder layer runs its forward pass twice: once in the forward, once again in
the backward to rebuild what it threw away. For LoRA that second forward is a third of a step's GEMMs (forward 2N,
recompute 2N, activation gradients 2N FLOPs a token). A layer that keeps its activations instead costs
Shape.activation_elements x 2 bytes a token (1.4 GiB a layer at 8k tokens for Qwen3-32B) and skips the recompute.
Sharded over a node's 8 GPUs, a 32B base leaves tens of GiB per GPU idle at 8k tokens: `recompute_layers: N`
spends them, keeping checkpointing on the first N layers only. `llm-bridge check` plans the memory.

transformers marks each decoder layer (GradientCheckpointingLayer) with `gradient_checkpointing`; verl's FSDP
engine turns it on for all of them (`gradient_checkpointing_enable`) before FSDP wraps the model. This wraps that
call and turns it off again past the first N layers. The value arrives as BRIDGE_RECOMPUTE_LAYERS, set by the
rendered script (SFT) or Ray's runtime_env (the GRPO actor), so the model's own config.json is untouched.
"""

import os

ENV = "BRIDGE_RECOMPUTE_LAYERS"


def limit_recomputed_layers(model, layers: int) -> tuple[int, int]:
    """Leave gradient checkpointing on in the first `layers` decoder layers of `model` only: (recomputed, all)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    decoder_layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in decoder_layers[layers:]:
        layer.gradient_checkpointing = False
    return sum(bool(layer.gradient_checkpointing) for layer in decoder_layers), len(decoder_layers)


def install(modeling_utils) -> None:
    """Wrap PreTrainedModel.gradient_checkpointing_enable in this process when BRIDGE_RECOMPUTE_LAYERS is set."""
    value = os.environ.get(ENV, "")
    if not value:
        return
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{ENV}={value!r}: a number of decoder layers of at least 1 is needed. "
                         "Fix: set sft.recompute_layers / rl.recompute_layers in team.yaml and render again")
    pretrained = modeling_utils.PreTrainedModel
    enable = pretrained.gradient_checkpointing_enable
    if getattr(enable, "bridge_recompute_layers", False):
        return

    def gradient_checkpointing_enable(self, *args, **kwargs):
        enable(self, *args, **kwargs)
        recomputed, total = limit_recomputed_layers(self, int(value))
        print(f"llm_bridge: gradient checkpointing on {recomputed} of {total} decoder layers ({ENV})", flush=True)

    gradient_checkpointing_enable.bridge_recompute_layers = True
    pretrained.gradient_checkpointing_enable = gradient_checkpointing_enable
