"""The recipe's main job on a CPU: the real rendered scripts, run end to end on a tiny model.

    python tests/cpu/pipeline.py [--work DIR]      # ~5 minutes on 2 cores; writes DIR/summary.json

preprocess (gsm8k.py on bundled-format sample data) -> SFT (run_sft.sbatch, torchrun, 2 ranks) -> merge ->
GRPO (run_ppo.sbatch, main_ppo + Ray, 2 steps) -> merge -> generate with both merged models.

The team config is templates/team.example.yaml with this machine's values (a venv, local paths, 2
"GPUs", a tiny model). The scripts are rendered by `llm-bridge render` and run as a team runs them;
only CPU_ENV and the *_CPU_OVERRIDES below are added, because verl 0.9.1 has no CPU platform and no
CPU rollout of its own (tests/cpu/verl_cpu_*.py provide both, through verl's plugin registries).
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
import build_tiny  # noqa: E402

CPU_ENV = {
    "PYTHONPATH": str(HERE),
    "VERL_USE_EXTERNAL_MODULES": "verl_cpu_platform,verl_cpu_hf_rollout",
    "VERL_PLATFORM": "cpu",
    "VERL_ENGINE_DEVICE": "cuda",  # the FSDP engine is registered for cuda only; its code is device-agnostic
    "RAY_AUTH_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
    # Ray's memory monitor kills a cluster's workers when the whole machine's memory passes 95%, whoever uses it: on
    # a test box two processes share, every Ray cluster there would kill its own workers at once. The kernel stays
    # the judge of a real out-of-memory.
    "RAY_memory_monitor_refresh_ms": "0",
}
# `llm-bridge generate` and `eval` on a CPU: vLLM's offline API answered by transformers (vllm_offline/vllm)
VLLM_CPU_ENV = {"PYTHONPATH": str(HERE / "vllm_offline")}
SFT_CPU_OVERRIDES = ["trainer.device=cpu", "engine.use_torch_compile=False", "data.num_workers=0"]
PPO_CPU_OVERRIDES = [
    "trainer.device=cpu",
    "actor_rollout_ref.rollout.name=hf_cpu",
    "actor_rollout_ref.actor.use_torch_compile=False",
    "actor_rollout_ref.actor.fsdp_config.use_torch_compile=False",
    "actor_rollout_ref.ref.fsdp_config.use_torch_compile=False",
    # verl starts 8 agent-loop, 8 reward and 8 storage actors by default, each importing torch: too many for 2 cores
    "actor_rollout_ref.rollout.agent.num_workers=1",
    "reward.num_workers=1",
    "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
    "data.dataloader_num_workers=0",
    "trainer.val_before_train=False",
]
# Single node only: main_ppo starts Ray itself. Logical CPUs for verl's many 1-CPU actors, and 2 GPU-shaped
# slots for the 2 training ranks. (Multi-node jobs start Ray with the job's CPUs and GPUs instead.)
LOCAL_RAY_OVERRIDES = [
    "ray_kwargs.ray_init.num_cpus=16",
    "+ray_kwargs.ray_init.num_gpus=2",
    "+ray_kwargs.ray_init.include_dashboard=False",
]

# The sft and rl settings a CPU needs: verl's FSDP1 wrapper insists on GPU parameters (sync_module_states=True), so
# CPU runs take FSDP2; Liger's kernels are Triton and flash-attn is CUDA, GPU only.
CPU_STAGE = {"attn_implementation": "sdpa", "gradient_checkpointing": False, "strategy": "fsdp2", "use_liger": False}


def team_config(work: Path, nodes: int = 1, rl_model: Path | None = None) -> dict:
    """templates/team.example.yaml with this machine's values; `nodes` > 1 for the SLURM lab cluster."""
    team = yaml.safe_load((REPO / "templates" / "team.example.yaml").read_text())
    # Ray on a node needs ~16 logical CPUs for verl's helper actors; the lab's nodes advertise 64.
    cpus = 16 if nodes > 1 else os.cpu_count() or 2
    team["slurm"].update(nodes=nodes, gpus_per_node=2, cpus_per_task=cpus, time_limit="00:30:00")
    team["slurm"].pop("nodelist")
    team["slurm"]["partition"] = "lab" if nodes > 1 else "local"
    team["environment"] = {"venv": sys.prefix}
    team["paths"] = {name: str(work / name) for name in ("checkpoints", "logs", "hf_home")}
    team["network"] = {"socket_ifname": "eth0", "rendezvous_timeout_s": 120} if nodes > 1 else {}
    team["wandb"] = {"project": "llm-bridge-cpu", "mode": "disabled"}
    team["huggingface"] = {"org": "local", "offline": True}
    cpu = {**CPU_STAGE, "test_freq": -1, "total_epochs": 1}
    team["sft"].update(cpu, experiment_name="sft-tiny", model=str(work / "tiny" / "model"),
                       train_files=str(work / "data" / "gsm8k_sft" / "train.parquet"),
                       val_files=str(work / "data" / "gsm8k_sft" / "test.parquet"),
                       train_batch_size=8, max_length=256, max_token_len_per_gpu=1024, lr=1e-3,
                       lr_scheduler="constant", warmup_ratio=0.0, total_training_steps=4, save_freq=4)
    team["rl"].update(cpu, experiment_name="grpo-tiny", model=str(rl_model or work / "models" / "sft"),
                      train_files=str(work / "data" / "gsm8k" / "train.parquet"),
                      val_files=str(work / "data" / "gsm8k" / "test.parquet"),
                      reward_function=str(HERE / "shaped_reward.py"),
                      train_batch_size=4, max_prompt_length=192, max_response_length=32, rollout_n=2,
                      ppo_mini_batch_size=4, ppo_max_token_len_per_gpu=1024, lr=1e-4,
                      total_training_steps=2, save_freq=2)
    return team


def render(work: Path, team: dict, out: str = "rendered") -> Path:
    """Write `team` as work/team-<out>.yaml and render it with `llm-bridge render` into work/<out>."""
    path = work / f"team-{out}.yaml"
    path.write_text(yaml.safe_dump(team, sort_keys=False))
    result = subprocess.run([sys.executable, "-m", "llm_bridge.cli", "render", "--team", str(path), "--out", str(work / out)],
                            capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(f"llm-bridge render {path} failed:\n{result.stdout}{result.stderr}")
    return work / out


def sft_command(rendered: Path, *overrides: str) -> list[str]:
    """The rendered single-node SFT script, run with bash on this machine."""
    return ["bash", str(rendered / "sft" / "run_sft.sbatch"), *SFT_CPU_OVERRIDES, *overrides]


def grpo_command(rendered: Path, *overrides: str) -> list[str]:
    """The rendered single-node GRPO script, run with bash on this machine (main_ppo starts Ray itself)."""
    return ["bash", str(rendered / "ppo" / "run_ppo.sbatch"), *PPO_CPU_OVERRIDES, *LOCAL_RAY_OVERRIDES, *overrides]


def merge_command(checkpoint: Path, out: Path) -> list[str]:
    """llm-bridge merge (verl's own merger): the run's newest checkpoint -> a Hugging Face model in `out`."""
    return [sys.executable, "-m", "llm_bridge.cli", "merge", "--checkpoint", str(checkpoint), "--out", str(out)]


def generate_command(model: Path, data: Path, out: Path, *flags: str, greedy: bool = True) -> list[str]:
    """llm-bridge generate: answers to `data`'s prompts, greedy unless told (run it with VLLM_CPU_ENV on a CPU)."""
    return [sys.executable, "-m", "llm_bridge.cli", "generate", "--model", str(model), "--data", str(data),
            "--out", str(out), *(["--greedy"] if greedy else []), *flags]


# Ray gives a node it starts 30 s (hard-coded in ray/_private/node.py) to register with its GCS. On 2 cores, beside
# another test's verl run importing in ~10 processes at once, that deadline was missed twice in 2 suite runs before
# any of the recipe's code ran: a run that fails so is started once more.
RAY_START_TIMEOUT = "The current node timed out during startup"


class StageFailed(Exception):
    """A run ended with an error. An Exception, not SystemExit: pytest reports a module fixture's Exception once,
    cleanly, on every test that uses it, and a benchmark's main turns it into a plain exit message."""


def last_errors(log: Path, count: int = 3) -> list[str]:
    """The log's last lines that name an error (as `llm-bridge status` reads a job's log): the cause, in a message
    short enough for a CI summary."""
    from llm_bridge.login.chain import is_error_line

    return [line.strip()[:300] for line in log.read_text(errors="replace").splitlines() if is_error_line(line)][-count:]


class Stage:
    def __init__(self, work: Path):
        self.work, self.times = work, {}

    def run(self, name: str, argv: list[str], env: dict | None = None) -> None:
        self.run_together([(name, argv, env)])

    def run_together(self, runs: list[tuple[str, list[str], dict | None]], on_done=None) -> None:
        """Start every (name, argv, env) at once and wait for all; each logs to logs/<name>.log. on_done(name) runs
        as soon as that run succeeds, while the others go on (each run's time is still its own). Fails after all
        have ended if any failed, naming each failed one. A run whose Ray node did not start in time is started
        once more (RAY_START_TIMEOUT)."""
        ended, retried = {}, set()

        def start(name: str, argv: list[str], env: dict | None) -> tuple:
            log = self.work / "logs" / f"{name}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            print(f"[{name}] {' '.join(argv[:3])} ... (log: {log})", flush=True)
            with log.open("w") as handle:
                process = subprocess.Popen(argv, cwd=REPO, env={**os.environ, **(env or {})}, stdout=handle,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            # the end time is taken when the process ends, not when the loop below (maybe busy in on_done) sees it
            threading.Thread(target=lambda: (process.wait(), ended.__setitem__(process, time.time())), daemon=True).start()
            return name, log, process, time.time(), argv, env

        failed, pending = [], [start(*run) for run in runs]
        try:
            while pending:
                for run in [run for run in pending if run[2].poll() is not None]:
                    pending.remove(run)
                    name, log, process, started, argv, env = run
                    if process.returncode != 0 and name not in retried and RAY_START_TIMEOUT in log.read_text(errors="replace"):
                        retried.add(name)
                        print(f"[{name}] Ray's node did not start within Ray's 30 s (a busy machine): once more", flush=True)
                        pending.append(start(name, argv, env))
                        continue
                    self.times[name] = round(ended.get(process, time.time()) - started, 1)
                    if process.returncode != 0:
                        print("".join(log.read_text().splitlines(keepends=True)[-60:]), file=sys.stderr)
                        failed.append(f"[{name}] failed with exit code {process.returncode}; full log: {log}\n"
                                      + "".join(f"    {line}\n" for line in last_errors(log)))
                    else:
                        print(f"[{name}] done in {self.times[name]} s", flush=True)
                        if on_done:
                            on_done(name)
                time.sleep(0.2 if pending else 0)
        except BaseException:  # interrupted, or on_done failed: leave nothing running, as subprocess.run does
            for run in pending:
                run[2].kill()
            raise
        if failed:
            raise StageFailed("\n".join(failed))


def metrics(logs: Path, experiment: str) -> list[dict]:
    [path] = glob.glob(str(logs / f"{experiment}-local-*.metrics.jsonl"))
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def compare_and_generate(base: Path, sft: Path, grpo: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def load(path):
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)

    def max_diff(a, b):
        sa, sb = a.state_dict(), b.state_dict()
        return max((sa[k] - sb[k]).abs().max().item() for k in sa)

    models = {"base": load(base), "sft": load(sft), "grpo": load(grpo)}
    tokenizer = AutoTokenizer.from_pretrained(sft)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Tom has 3 apples and gets 4 more. How many?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    generations = {}
    for name in ("sft", "grpo"):
        out = models[name].generate(**prompt, max_new_tokens=16, do_sample=False)
        generations[name] = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    return {
        "max_weight_change": {"sft_vs_base": max_diff(models["sft"], models["base"]),
                              "grpo_vs_sft": max_diff(models["grpo"], models["sft"])},
        "generations": generations,
        "new_tokens": {name: len(tokenizer(text)["input_ids"]) for name, text in generations.items()},
    }


def prepare(work: Path, stage: "Stage") -> None:
    """Tiny model, sample data and its verl parquet files under `work`."""
    build_tiny.main(work / "tiny")
    stage.run("preprocess", [sys.executable, "train/scripts/data_preprocess/gsm8k.py", "--local-path", str(work / "tiny" / "sample_gsm8k"),
                             "--rl-dir", str(work / "data" / "gsm8k"), "--sft-dir", str(work / "data" / "gsm8k_sft")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO / ".cpu_pipeline", help="work directory (default: %(default)s)")
    work = parser.parse_args().work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    stage = Stage(work)

    def merge(name: str, checkpoint: Path) -> None:
        stage.run(f"merge_{name}", merge_command(checkpoint, work / "models" / name))

    prepare(work, stage)
    rendered = render(work, team_config(work))

    stage.run("sft", sft_command(rendered), CPU_ENV)
    merge("sft", work / "checkpoints" / "sft" / "sft-tiny")
    stage.run("grpo", grpo_command(rendered), CPU_ENV)
    merge("grpo", work / "checkpoints" / "grpo" / "grpo-tiny")

    sft_metrics = metrics(work / "logs", "sft-tiny")
    grpo_metrics = metrics(work / "logs", "grpo-tiny")
    summary = {
        "sft_loss": [m["data"]["train/loss"] for m in sft_metrics if "train/loss" in m["data"]],
        "grpo_steps": [{k: m["data"].get(k) for k in ("actor/grad_norm", "actor/pg_loss", "critic/score/mean")}
                       for m in grpo_metrics if "actor/grad_norm" in m["data"]],
        **compare_and_generate(work / "tiny" / "model", work / "models" / "sft", work / "models" / "grpo"),
        "seconds": stage.times,
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    print(f"\nCPU pipeline OK in {sum(stage.times.values()):.0f} s; summary: {work / 'summary.json'}")


if __name__ == "__main__":
    try:
        main()
    except StageFailed as failure:
        raise SystemExit(str(failure))
