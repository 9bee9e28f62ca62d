"""rl.rollout_correction: verl's rollout correction (importance weights, rejection) for the gap between vLLM's
log-probs and the actor's, rendered into verl 0.9.1's keys for either old_log_probs mode, and every misuse refused
by check with its field and fix. The runs on the CPU are in test_grpo_learns.py (they need its taught model)."""

from pathlib import Path

import pytest
from verl.utils.config import omega_conf_to_dataclass

from llm_bridge.login.loader import load
from llm_bridge.login.render import render_all
from llm_bridge.login.rules import check
from conftest import bridge
from test_verl_config import compose_verl, verl_argv


def verl_config(write_team, example):
    team = write_team(example)
    config, problems = load(team)
    assert config is not None and problems == [], problems
    script = render_all(config, team, "out")[Path("ppo/run_ppo.sbatch")]
    return compose_verl("ppo_trainer", verl_argv(script, "llm_bridge.job.verl_ppo", "PPO_ARGS"))


def test_rejection_in_bypass_mode_goes_through_verls_bypass_loss(example, write_team):
    """verl 0.9.1's V1 trainer skips algorithm.rollout_correction in bypass mode, so the actor's policy loss gets it."""
    example["rl"]["rollout_correction"] = {"rollout_rs": "seq_mean_k1", "rollout_rs_threshold": 1.001}
    cfg = verl_config(write_team, example)
    assert cfg.algorithm.rollout_correction.bypass_mode is True
    assert cfg.algorithm.rollout_correction.rollout_rs == "seq_mean_k1" and cfg.algorithm.rollout_correction.rollout_is is None
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)  # as verl's worker builds it
    assert actor.policy_loss.loss_mode == "bypass_mode"
    assert dict(actor.policy_loss.rollout_correction) == {"rollout_rs": "seq_mean_k1", "rollout_rs_threshold": 1.001}


def test_recompute_takes_weights_and_rejection_in_the_trainer(example, write_team):
    example["rl"].update(old_log_probs="recompute", rollout_correction={
        "rollout_is": "token", "rollout_is_threshold": 2.0, "rollout_rs": "seq_max_k3", "rollout_rs_threshold": 0.01})
    cfg = verl_config(write_team, example)
    correction = cfg.algorithm.rollout_correction
    assert correction.bypass_mode is False and correction.rollout_is == "token" and correction.rollout_is_threshold == 2.0
    assert correction.rollout_rs == "seq_max_k3" and correction.rollout_rs_threshold == 0.01
    assert cfg.actor_rollout_ref.actor.policy_loss.loss_mode == "vanilla"  # the trainer applies it (_compute_advantage)


def test_without_the_section_verl_gets_no_correction(example, write_team):
    cfg = verl_config(write_team, example)
    assert cfg.algorithm.rollout_correction.rollout_is is None and cfg.algorithm.rollout_correction.rollout_rs is None
    assert cfg.actor_rollout_ref.actor.policy_loss.loss_mode == "vanilla"


@pytest.mark.parametrize("rl, field, fix", [
    ({"rollout_correction": {"rollout_is": "token"}}, "rl.rollout_correction.rollout_is", "rl.old_log_probs: recompute"),
    ({"rollout_correction": {"rollout_rs": "seq_mean_k1"}}, "rl.rollout_correction.rollout_rs_threshold", "e.g. 1.001"),
    ({"rollout_correction": {"rollout_rs": "token_k3"}}, "rl.rollout_correction.rollout_rs_threshold", "e.g. 0.01"),
    ({"rollout_correction": {"rollout_rs": "token_k1", "rollout_rs_threshold": 0.999}},
     "rl.rollout_correction.rollout_rs_threshold", "a bound above 1"),
    ({"rollout_correction": {"rollout_rs": "seq_max_k1", "rollout_rs_threshold": 1.001}},
     "rl.rollout_correction.rollout_rs", "seq_max_k2"),
    ({"old_log_probs": "recompute", "rollout_correction": {"rollout_is": "geometric"}},
     "rl.rollout_correction.rollout_is", "'token' or 'sequence'"),
    ({"old_log_probs": "recompute", "rollout_correction": {"rollout_is": "token", "rollout_is_threshold": 0.5}},
     "rl.rollout_correction.rollout_is_threshold", "greater than 1"),
])
def test_every_rollout_correction_misuse_names_its_field_and_fix(example, write_team, rl, field, fix):
    example["rl"].update(rl)
    result = bridge("check", "--team", str(write_team(example)))
    assert result.returncode == 1
    assert f"ERROR {field}: " in result.stdout and fix in result.stdout, result.stdout


def test_a_section_that_corrects_nothing_is_a_warning(example, write_team):
    example["rl"]["rollout_correction"] = {"rollout_is_threshold": 3.0}
    config, problems = load(write_team(example))
    assert config is not None and problems == []
    [problem] = [p for p in check(config, local_paths=False) if p.field == "rl.rollout_correction"]
    assert problem.severity == "warning" and "remove the section" in problem.fix
