"""verl 0.9.1's PPO/GRPO driver (main_ppo, V1 trainer), plus a final checkpoint before the SLURM
time limit (llm_bridge.job.deadline).

verl's legacy trainer has this ("ESI" save); the V1 trainer that 0.9.1 runs by default does not.
The trainer loop runs in verl's TaskRunner Ray actor, so the hook goes in there: a TaskRunner whose
trainer class checks the deadline at the end of each step (after verl's own save_freq save, where
the state is consistent), saves if it must, and ends the loop after that step.

    python3 -m llm_bridge.job.verl_ppo <verl main_ppo overrides>
"""

import ray
from verl.trainer import main_ppo

from llm_bridge.job import verl_patches
from llm_bridge.job.deadline import StepClock, announce_stop


def with_deadline(trainer_cls: type) -> type:
    class DeadlineTrainer(trainer_cls):
        def on_step_begin(self):
            if not hasattr(self, "_clock"):
                self._clock = StepClock()
            else:
                self._clock.step_begins()
            super().on_step_begin()

        def on_step_end(self):
            super().on_step_end()
            step = self.global_steps
            if step >= self.total_training_steps or not self._clock.deadline_is_close():
                return
            save_freq = self.config.trainer.save_freq
            if not (save_freq > 0 and step % save_freq == 0):  # verl saved this step already otherwise
                self._save_checkpoint()
            self.total_training_steps = step  # the loop ends after logging this step
            announce_stop(step, self._clock)

    DeadlineTrainer.__name__ = DeadlineTrainer.__qualname__ = f"Deadline{trainer_cls.__name__}"
    return DeadlineTrainer


@ray.remote
class DeadlineTaskRunner(main_ppo.TaskRunnerV1.__ray_actor_class__):
    def run(self, config):
        from verl.trainer.ppo import v1

        get_trainer_cls = v1.get_trainer_cls
        v1.get_trainer_cls = lambda mode: with_deadline(get_trainer_cls(mode))  # TaskRunnerV1.run imports it late
        return super().run(config)


def main() -> None:
    verl_patches.apply()  # the Ray workers get it from the runtime_env hook in the launch scripts
    main_ppo.TaskRunnerV1 = DeadlineTaskRunner  # main() hands this class to run_ppo()
    main_ppo.main()


if __name__ == "__main__":
    from llm_bridge.job.verl_ppo import main as imported_main  # Ray pickles the runner by module name, not from __main__

    imported_main()
