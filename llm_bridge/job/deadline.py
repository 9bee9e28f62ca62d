"""A final checkpoint before the SLURM time limit, for verl 0.9.1's SFT and PPO (V1) trainers.

The launch script exports the deadline (Unix seconds) in MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP,
the variable verl's legacy PPO trainer reads for its "ESI" save, and the same rule decides here:
save when the time left is under the longest step so far + 60 s (verl's `should_save_ckpt_esi`).
The trainer then saves, stops cleanly and leaves BRIDGE_STOP_FILE; the script requeues the job
and the next run resumes from that checkpoint (resume_mode=auto).
"""

import os
import time
from pathlib import Path

from verl.utils.checkpoint.checkpoint_manager import should_save_ckpt_esi

STOP_FILE_ENV = "BRIDGE_STOP_FILE"
DEADLINE_ENV = "MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP"


class StepClock:
    """The longest step so far, measured from one step's start to the next."""

    def __init__(self):
        self.longest_s = 0.0
        self.started = time.monotonic()

    def step_begins(self) -> None:
        now = time.monotonic()
        self.longest_s = max(self.longest_s, now - self.started)
        self.started = now

    def deadline_is_close(self) -> bool:
        longest = max(self.longest_s, time.monotonic() - self.started)
        return should_save_ckpt_esi(max_steps_duration=longest)


def announce_stop(step: int, clock: StepClock) -> None:
    print(f"Time limit close: saving a final checkpoint at step {step} and stopping "
          f"(longest step {clock.longest_s:.1f} s)", flush=True)
    stop_file = os.environ.get(STOP_FILE_ENV)
    if stop_file:
        Path(stop_file).write_text(f"{step}\n")
