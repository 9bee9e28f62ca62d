"""The verl overrides in the rendered cluster scripts compose against verl 0.9.1's own Hydra config.

The argv each script hands to verl is taken from the rendered text and expanded by bash, exactly as
the job would; then Hydra composes it. A removed or misspelt key fails here, not after the queue.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest
import verl
from hydra import compose, initialize_config_dir

from llm_bridge.login.loader import load
from llm_bridge.login.render import render_all

from conftest import EXAMPLE

VERL_CONFIG = Path(verl.__file__).parent / "trainer" / "config"
JOB_ENV = {"EXPERIMENT": "exp", "CKPT_DIR": "/ckpt/exp", "SLURM_CPUS_PER_TASK": "240", "RAY_TMP": "/tmp/ray_1",
           "N_NODES": "3", "GPUS_PER_NODE": "8", "HOME": "/home/user", "HYDRA_RUN_DIR": "/logs/hydra/run"}


def verl_argv(script: str, entrypoint: str, array: str, env: dict | None = None) -> list[str]:
    """The arguments the script passes to `-m <entrypoint>`, after bash expansion (extra "$@" left out)."""
    # the array, then any `if ...; then ARRAY+=(...); fi` blocks that follow it
    block = re.search(rf"^{array}=\(\n.*?^\)$(?:\nif [^\n]*\n(?:  [^\n]*\n)*fi$)*", script, flags=re.S | re.M).group(0)
    tail = re.search(rf"-m {re.escape(entrypoint)} \"\$\{{{array}\[@\]\}}\"(.*?)\"\$@\"", script, flags=re.S).group(1)
    program = f'{block}\nprintf "%s\\n" "${{{array}[@]}}" {tail.replace(chr(92) + chr(10), " ")}'
    env = {**os.environ, **JOB_ENV, **(env or {})}
    out = subprocess.run(["bash", "-c", program], env=env, capture_output=True, text=True, check=True)
    argv = out.stdout.splitlines()
    assert any(a.startswith("hydra.run.dir=/") for a in argv), "Hydra writes its outputs/ next to the job log"
    return [a for a in argv if not a.startswith("hydra.")]  # Hydra's own settings are not part of verl's config


def compose_verl(config_name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(VERL_CONFIG), version_base=None):
        return compose(config_name=config_name, overrides=overrides)


@pytest.fixture(scope="module")
def scripts() -> dict[str, str]:
    config, problems = load(EXAMPLE)
    assert config is not None, problems
    return {str(p): text for p, text in render_all(config, EXAMPLE, "out").items()}


@pytest.mark.parametrize("name", ["sft/run_sft.sbatch", "mutinode_sft/run_sft_multinode.sbatch"])
def test_sft_overrides_compose(scripts, name):
    argv = verl_argv(scripts[name], "llm_bridge.job.verl_sft", "SFT_ARGS")
    cfg = compose_verl("sft_trainer_engine", argv)
    assert cfg.data.train_files == "/home/user/data/gsm8k_sft/train.parquet"
    assert cfg.data.train_batch_size == 192 and cfg.data.enable_thinking_default is None
    assert cfg.engine.strategy == "fsdp" and cfg.optim.lr == pytest.approx(1e-5)
    assert cfg.data.max_token_len_per_gpu == 32768 and cfg.model.enable_gradient_checkpointing is False
    assert cfg.model.override_config.attn_implementation == "flash_attention_2" and cfg.model.use_liger is True
    assert cfg.trainer.default_local_dir == "/ckpt/exp" and cfg.trainer.resume_mode == "auto"
    assert list(cfg.trainer.logger) == ["console", "file", "wandb"]


@pytest.mark.parametrize("name, nnodes", [("ppo/run_ppo.sbatch", 1), ("mutinode_ppo/run_ppo_multinode.sbatch", 3)])
def test_ppo_overrides_compose(scripts, name, nnodes):
    argv = verl_argv(scripts[name], "llm_bridge.job.verl_ppo", "PPO_ARGS")
    cfg = compose_verl("ppo_trainer", argv)
    assert cfg.algorithm.adv_estimator == "grpo"
    assert cfg.actor_rollout_ref.rollout.name == "vllm" and cfg.actor_rollout_ref.rollout.n == 8
    assert cfg.actor_rollout_ref.actor.ppo_mini_batch_size == 48
    assert cfg.actor_rollout_ref.model.use_liger is True and cfg.actor_rollout_ref.actor.ppo_max_token_len_per_gpu == 32768
    assert cfg.trainer.save_freq == 20 and cfg.trainer.nnodes == nnodes and cfg.trainer.n_gpus_per_node == 8
    if nnodes == 1:  # main_ppo starts its own Ray; the multi-node driver attaches to the job's cluster
        assert cfg.ray_kwargs.ray_init.num_cpus == 240 and cfg.ray_kwargs.ray_init.address == "local"
    else:
        assert cfg.ray_kwargs.ray_init.num_cpus is None
    assert "MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP" not in cfg.ray_kwargs.ray_init.runtime_env.env_vars


@pytest.mark.parametrize("name", ["ppo/run_ppo.sbatch", "mutinode_ppo/run_ppo_multinode.sbatch", "mutinode_ppo/submit_ppo.sh"])
def test_ppo_hands_the_allocator_to_every_ray_worker(scripts, name):
    """Workers on other nodes run under a Ray started elsewhere: the allocator must travel in Ray's runtime_env,
    whole, even with the comma a team's own value may have (Hydra would read an unquoted one as a sweep)."""
    value = "expandable_segments:True,max_split_size_mb:128"
    argv = verl_argv(scripts[name], "llm_bridge.job.verl_ppo", "PPO_ARGS", env={"PYTORCH_CUDA_ALLOC_CONF": value})
    cfg = compose_verl("ppo_trainer", argv)
    assert cfg.ray_kwargs.ray_init.runtime_env.env_vars.PYTORCH_CUDA_ALLOC_CONF == value


@pytest.mark.parametrize("name", ["ppo/run_ppo.sbatch", "mutinode_ppo/run_ppo_multinode.sbatch"])
def test_ppo_hands_the_save_deadline_to_the_trainer_actor_as_a_string(scripts, name):
    deadline = {"MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP": "1790000000"}
    cfg = compose_verl("ppo_trainer", verl_argv(scripts[name], "llm_bridge.job.verl_ppo", "PPO_ARGS", env=deadline))
    assert cfg.ray_kwargs.ray_init.runtime_env.env_vars.MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP == "1790000000"


def test_ppo_with_critic_and_custom_reward_composes(example, write_team):
    example["rl"].update(algorithm="ppo", reward_function="~/rewards/hle.py", critic_model="~/models/critic")
    team = write_team(example)
    config, problems = load(team)
    assert config is not None, problems
    script = render_all(config, team, "out")[Path("ppo/run_ppo.sbatch")]
    cfg = compose_verl("ppo_trainer", verl_argv(script, "llm_bridge.job.verl_ppo", "PPO_ARGS"))
    assert cfg.algorithm.adv_estimator == "gae"
    assert cfg.critic.model.path == "/home/user/models/critic"
    assert cfg.reward.custom_reward_function.path == "/home/user/rewards/hle.py"


def test_ppo_defaults_skip_the_reference_model_and_the_old_log_prob_pass(scripts):
    from verl.trainer.ppo.utils import need_reference_policy

    cfg = compose_verl("ppo_trainer", verl_argv(scripts["ppo/run_ppo.sbatch"], "llm_bridge.job.verl_ppo", "PPO_ARGS"))
    assert cfg.algorithm.rollout_correction.bypass_mode is True  # old_log_probs: rollout
    assert cfg.actor_rollout_ref.rollout.calculate_log_probs is True  # bypass mode reads vLLM's log-probs
    assert not need_reference_policy(cfg)


def test_verl_defaults_come_back_with_recompute_and_kl(example, write_team):
    from verl.trainer.ppo.utils import need_reference_policy

    example["rl"].update(old_log_probs="recompute", use_kl_loss=True)
    team = write_team(example)
    config, problems = load(team)
    assert config is not None, problems
    script = render_all(config, team, "out")[Path("ppo/run_ppo.sbatch")]
    cfg = compose_verl("ppo_trainer", verl_argv(script, "llm_bridge.job.verl_ppo", "PPO_ARGS"))
    assert cfg.algorithm.rollout_correction.bypass_mode is False
    assert need_reference_policy(cfg) and cfg.actor_rollout_ref.actor.kl_loss_coef == pytest.approx(0.001)


def test_lora_reaches_verl_for_sft_and_the_grpo_actor(example, write_team):
    """team.yaml's lora sections become verl 0.9.1's own keys; with LoRA the reference policy is the actor with
    its adapter off (no second model), and vLLM loads weights as safetensors."""
    example["sft"]["lora"] = {"rank": 32, "alpha": 64, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
                              "exclude_modules": ["lm_head"]}
    example["rl"].update(lora={"rank": 16, "alpha": 32, "base_dtype": "fp32", "checkpoints": "full"}, use_kl_loss=True)
    team = write_team(example)
    config, problems = load(team)
    assert config is not None, problems
    scripts = render_all(config, team, "out")
    sft = compose_verl("sft_trainer_engine", verl_argv(scripts[Path("sft/run_sft.sbatch")], "llm_bridge.job.verl_sft", "SFT_ARGS"))
    assert sft.model.lora_rank == 32 and sft.model.lora_alpha == 64
    assert sft.checkpoint.save_lora_only is True  # lora.checkpoints: adapter, the default
    assert list(sft.model.target_modules) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert list(sft.model.exclude_modules) == ["lm_head"] and sft.engine.model_dtype == "bf16"
    for name in ("ppo/run_ppo.sbatch", "mutinode_ppo/run_ppo_multinode.sbatch"):
        ppo = compose_verl("ppo_trainer", verl_argv(scripts[Path(name)], "llm_bridge.job.verl_ppo", "PPO_ARGS"))
        model = ppo.actor_rollout_ref.model
        assert model.lora_rank == 16 and model.lora_alpha == 32 and model.target_modules == "all-linear"
        assert ppo.actor_rollout_ref.actor.fsdp_config.model_dtype == "fp32"
        assert ppo.actor_rollout_ref.rollout.load_format == "safetensors"
        assert not ppo.actor_rollout_ref.actor.checkpoint.get("save_lora_only", False)  # checkpoints: full
        assert ppo.actor_rollout_ref.rollout.layered_summon is False  # a 0.5B model: one gather is cheap
    example["rl"]["model"] = "Qwen/Qwen2.5-72B-Instruct"  # 70B+: verl's advice, gather one unit at a time
    big = write_team(example, "big.yaml")
    ppo = compose_verl("ppo_trainer", verl_argv(render_all(load(big)[0], big, "out")[Path("ppo/run_ppo.sbatch")],
                                                "llm_bridge.job.verl_ppo", "PPO_ARGS"))
    assert ppo.actor_rollout_ref.rollout.layered_summon is True
    # no lora section: full fine-tuning, verl's defaults untouched
    plain = compose_verl("ppo_trainer", verl_argv(render_all(load(EXAMPLE)[0], EXAMPLE, "out")[Path("ppo/run_ppo.sbatch")],
                                                  "llm_bridge.job.verl_ppo", "PPO_ARGS"))
    assert plain.actor_rollout_ref.model.lora_rank == 0 and plain.actor_rollout_ref.actor.fsdp_config.model_dtype == "fp32"
