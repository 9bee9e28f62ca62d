"""verl 0.9.1's SFT trainer, plus a final checkpoint before the SLURM time limit (llm_bridge.job.deadline),
and the recipe's chat template when the script names one (BRIDGE_CHAT_TEMPLATE, sft.chat_template).

verl's SFT loop saves and returns on its last step, so the step that crosses the deadline simply
becomes the last step. Ranks time their own steps and could disagree by one step, so the decision
is all-reduced (max) every step: one 8-byte gloo all-reduce.

    torchrun ... -m llm_bridge.job.verl_sft <verl sft_trainer overrides>
"""

import os
import re
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from verl.trainer import sft_trainer
from verl.utils import tensordict_utils as tu

from llm_bridge.job import verl_patches
from llm_bridge.job.deadline import StepClock, announce_stop

STEP_LOG = os.environ.get("BRIDGE_STEP_LOG")
CHAT_TEMPLATES = Path(__file__).parent / "chat_templates"


def chat_template_override(name: str) -> str:
    """verl's model.custom_chat_template set to the named template, as one Hydra override: single-quoted, with
    each quote escaped and the backslashes right before a quote (or the end) doubled, Hydra's only escapes,
    so the text arrives unchanged. OmegaConf would read ${...} as an interpolation: no template may hold one."""
    path = CHAT_TEMPLATES / f"{name}.jinja"
    if not path.is_file():
        raise SystemExit(f"ERROR: BRIDGE_CHAT_TEMPLATE={name}: no {path.name} in {CHAT_TEMPLATES}. "
                         f"Fix: use one of {sorted(p.stem for p in CHAT_TEMPLATES.glob('*.jinja'))} (sft.chat_template)")
    text = path.read_text()
    if "${" in text:
        raise SystemExit(f"ERROR: {path} holds '${{', which OmegaConf would interpolate. Fix: write it as '$' '{{' in Jinja")
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    text = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text)
    return f"model.custom_chat_template='{text}'"


class DeadlineSFTTrainer(sft_trainer.SFTTrainer):
    """SFTTrainer whose last step moves forward when the save deadline comes close."""

    def __init__(self, config):
        super().__init__(config)
        self._step = self.resume_global_step
        self._clock = StepClock()
        train_batch = self.training_client.train_batch

        def train_batch_then_check_deadline(data):
            output = train_batch(data=data)
            self._step += 1
            started = self._clock.started
            self._clock.step_begins()
            metrics = tu.get(output, "metrics")
            if isinstance(metrics, dict):  # the step's wall time, as GRPO logs it; `llm-bridge plan` reads it back
                metrics["timing_s/step"] = self._clock.started - started
            if self.rank == 0 and STEP_LOG:
                with open(STEP_LOG, "a") as log:  # wall clock per step, for benchmarks
                    log.write(f'{{"step": {self._step}, "time": {time.time():.4f}}}\n')
            if self._step < self.total_training_steps and self._deadline_is_close():
                self.total_training_steps = self._step  # verl's loop: is_last_step -> save -> return
                if self.rank == 0:
                    announce_stop(self._step, self._clock)
            return output

        self.training_client.train_batch = train_batch_then_check_deadline

    def _deadline_is_close(self) -> bool:
        close = self._clock.deadline_is_close()
        flag = torch.tensor([int(close)], dtype=torch.int64)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def main() -> None:
    if os.environ.get("BRIDGE_CHAT_TEMPLATE"):
        sys.argv.append(chat_template_override(os.environ["BRIDGE_CHAT_TEMPLATE"]))
    verl_patches.apply()
    sft_trainer.SFTTrainer = DeadlineSFTTrainer  # run_sft() looks the class up at call time
    sft_trainer.main()


if __name__ == "__main__":
    main()
