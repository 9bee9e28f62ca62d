"""Cross-field rules: node counts, GPU layout, and verl 0.9.1's batch arithmetic on 1 and on all nodes."""

import pytest

from llm_bridge.login.loader import load
from llm_bridge.login.rules import check


def errors_of(write_team, data, local_paths=False):
    config, problems = load(write_team(data))
    assert config is not None, problems
    return {p.field: p for p in check(config, local_paths=local_paths) if p.severity == "error"}


def test_example_has_no_errors(example, write_team):
    assert errors_of(write_team, example) == {}


def test_node_count_must_match_nodelist(example, write_team):
    example["slurm"]["nodelist"] = "osk-gpu[51-52]"
    problem = errors_of(write_team, example)["slurm.nodelist"]
    assert "names 2 node(s)" in problem.message and "slurm.nodes is 3" in problem.message
    assert "slurm.nodes: 2" in problem.fix


def test_rollout_tp_must_divide_gpus(example, write_team):
    example["rl"]["rollout_tp"] = 3
    problem = errors_of(write_team, example)["rl.rollout_tp"]
    assert "1, 2, 4, 8" in problem.fix


def test_sft_batch_checked_for_the_multinode_layout_too(example, write_team):
    example["sft"]["train_batch_size"] = 256  # divides by 8, not by 3 x 8
    problem = errors_of(write_team, example)["sft.train_batch_size"]
    assert "24 data-parallel ranks" in problem.message and "240 samples" in problem.message
    assert "240 or 264" in problem.fix


def test_sft_micro_batch_rule_only_without_dynamic_batching(example, write_team):
    example["sft"]["micro_batch_size_per_gpu"] = 5  # 192/8 = 24, 192/24 = 8: neither divides by 5
    assert "sft.micro_batch_size_per_gpu" not in errors_of(write_team, example)
    example["sft"]["use_dynamic_bsz"] = False
    assert "sft.micro_batch_size_per_gpu" in errors_of(write_team, example)


def test_sft_token_budget_must_hold_the_longest_sample(example, write_team):
    example["sft"]["max_token_len_per_gpu"] = 1024
    assert "sft.max_token_len_per_gpu" in errors_of(write_team, example)


def test_grpo_batch_times_n_must_divide_gpus_as_verl_validates(example, write_team):
    example["rl"].update(use_dynamic_bsz=False, train_batch_size=10, rollout_n=3, ppo_mini_batch_size=8)
    problem = errors_of(write_team, example)["rl.train_batch_size"]
    assert "10 x 3 = 30" in problem.message and "verl refuses to start" in problem.message


def test_grpo_mini_batch_times_n_checked_even_with_dynamic_batching(example, write_team):
    # verl's start-up validation skips this with use_dynamic_bsz; train_mini_batch asserts it after the first rollout
    example["rl"].update(rollout_n=5, ppo_mini_batch_size=12, train_batch_size=96)
    problem = errors_of(write_team, example)["rl.ppo_mini_batch_size"]
    assert "12 x 5 = 60" in problem.message and "24 GPUs" in problem.message
    assert "multiple of 24" in problem.fix


def test_grpo_needs_a_group(example, write_team):
    example["rl"]["rollout_n"] = 1
    assert "rl.rollout_n" in errors_of(write_team, example)


def test_ppo_token_budget_must_hold_prompt_and_response(example, write_team):
    example["rl"]["ppo_max_token_len_per_gpu"] = 1024
    problem = errors_of(write_team, example)["rl.ppo_max_token_len_per_gpu"]
    assert "1536" in problem.message


@pytest.mark.parametrize("nodes, gpus", [(1, 8), (2, 4)])
def test_layouts_follow_the_config(example, write_team, nodes, gpus):
    example["slurm"].update(nodes=nodes, gpus_per_node=gpus)
    example["slurm"].pop("nodelist")
    example["rl"]["rollout_tp"] = 1
    assert errors_of(write_team, example) == {}


def test_node_local_paths_are_warned_about(example, write_team):
    example["paths"]["checkpoints"] = "/tmp/ckpt"
    config, problems = load(write_team(example))
    assert problems == []
    [warning] = [p for p in check(config, local_paths=False) if p.field == "paths.checkpoints"]
    assert warning.severity == "warning" and "shared" in warning.fix


def test_local_paths_off_the_cluster_give_one_warning(example, write_team):
    config, _ = load(write_team(example))
    warnings = [p for p in check(config) if p.field.startswith(("environment", "paths", "sft.", "rl."))]
    assert [p.field for p in warnings] == ["environment.conda_sh"]
    assert warnings[0].severity == "warning"


def test_local_paths_on_the_cluster_are_checked_one_by_one(example, write_team, tmp_path):
    conda_sh = tmp_path / "conda.sh"
    conda_sh.write_text("")
    example["environment"]["conda_sh"] = str(conda_sh)
    example["paths"]["logs"] = "/srv/no-such-dir/logs"
    config, problems = load(write_team(example))
    assert problems == []
    by_field = {p.field: p for p in check(config)}
    assert by_field["paths.logs"].fix == "mkdir -p /srv/no-such-dir/logs"
    assert "sft.train_files" in by_field


def warnings_of(write_team, data):
    config, problems = load(write_team(data))
    assert config is not None, problems
    return {p.field: p for p in check(config, local_paths=False) if p.severity == "warning"}


def test_sft_validation_set_smaller_than_one_batch_per_gpu_is_an_error(example, write_team, tmp_path):
    """A 2-GPU H100 run of the example with a 64-row validation file logged val/loss nan: verl's SFT
    validates in batches of train_batch_size / GPUs (192 / 2 = 96 rows per GPU) and drops incomplete ones."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    val = tmp_path / "val.parquet"
    example["sft"]["val_files"] = str(val)
    example["slurm"].pop("nodelist")
    example["slurm"].update(nodes=1, gpus_per_node=2)
    pq.write_table(pa.table({"messages": [[{"role": "user", "content": "q"}]] * 64}), val)
    problem = errors_of(write_team, example, local_paths=True)["sft.val_files"]
    assert "64 rows: 32 per GPU" in problem.message and "val/loss nan" in problem.message
    assert "at least 192 validation rows" in problem.fix

    pq.write_table(pa.table({"messages": [[{"role": "user", "content": "q"}]] * 192}), val)
    assert "sft.val_files" not in errors_of(write_team, example, local_paths=True)


def test_rollout_memory_warns_where_vllm_its_sampler_and_the_fsdp_models_overfill_the_gpu(example, write_team):
    """While vLLM generates, its pool (gpu_memory_utilization of the GPU), its sampler's workspace (~1 GiB with the
    scripts' expandable segments) and the FSDP actor's fp32 weights and Adam state share each GPU. 0.5B on one GPU
    with an H100's 0.5 peaked at 47.2 GiB (docs/benchmarks.md): the estimate is 47.8. 1.5B: 59.2, the estimate 59.0."""
    field = "rl.gpu_memory_utilization"
    assert example["slurm"]["gpus_per_node"] == 8 and example["rl"]["gpu_memory_utilization"] == 0.5
    assert field not in warnings_of(write_team, example)
    example["rl"]["gpu_memory_utilization"] = 0.85  # the actor sharded over 8 GPUs leaves room for it
    assert field not in warnings_of(write_team, example)
    example["rl"]["gpu_memory_utilization"] = 0.9
    problem = warnings_of(write_team, example)[field]
    assert "71.7 GiB" in problem.message and "~1.0 GiB" in problem.message and "actor 0.7 GiB" in problem.message
    assert "rl.gpu_memory_utilization: 0.86 or lower" in problem.fix

    example["slurm"].update(gpus_per_node=1, nodes=1, nodelist=None)
    example["rl"].update(gpu_memory_utilization=0.85, rollout_tp=1)  # one GPU holds the whole actor
    assert "rl.gpu_memory_utilization: 0.8 or lower" in warnings_of(write_team, example)[field].fix
    example["rl"].update(gpu_memory_utilization=0.5, model="Qwen/Qwen2.5-1.5B-Instruct")  # 12 B/param: 17.3 GiB
    assert field not in warnings_of(write_team, example)
    example["rl"]["gpu_memory_utilization"] = 0.7
    problem = warnings_of(write_team, example)[field]
    assert "actor 17.3 GiB" in problem.message and "0.65 or lower" in problem.fix
    example["rl"]["gpu_memory_utilization"] = 0.65
    assert field not in warnings_of(write_team, example)


def test_rollout_memory_counts_the_reference_model_and_the_critic(example, write_team):
    example["rl"].update(model="Qwen/Qwen2.5-7B-Instruct", gradient_checkpointing=True, ppo_max_token_len_per_gpu=16384)
    assert "rl.gpu_memory_utilization" not in warnings_of(write_team, example)  # 10.6 GiB of actor per GPU of 8
    example["rl"].update(use_kl_loss=True, gpu_memory_utilization=0.75)  # + a fp32 reference model (verl 0.9.1)
    problem = warnings_of(write_team, example)["rl.gpu_memory_utilization"]
    assert "actor 10.6 + reference 3.5 GiB" in problem.message and "0.69 or lower" in problem.fix
    example["rl"].update(algorithm="ppo", use_kl_loss=False)  # + a critic with its own Adam state
    problem = warnings_of(write_team, example)["rl.gpu_memory_utilization"]
    assert "actor 10.6 + critic 10.6 GiB" in problem.message and "0.6 or lower" in problem.fix
    example["slurm"]["gpus_per_node"] = 2  # 42 GiB each: no share of the GPU is left for vLLM
    example["rl"]["rollout_tp"] = 1
    problem = errors_of(write_team, example)["rl.gpu_memory_utilization"]  # 28.4 GiB of fp32 weights before vLLM starts
    assert "vLLM will not start" in problem.message and "~29.8 GiB per GPU" in problem.message
    assert "more GPUs (slurm.gpus_per_node)" in problem.fix


def test_vllm_that_cannot_start_beside_the_fsdp_weights_is_an_error(example, write_team):
    """vLLM starts after the FSDP workers and asks for gpu_memory_utilization of the whole GPU from what they left
    free. Qwen3-8B with LoRA on an fp32 base on one H100 (verl's LoRA example settings): 46.65 GiB free, 0.6 asked
    47.51 GiB, and vLLM did not start (docs/benchmarks.md, G3). The recipe's bf16 base at 0.5 ran at 57.8 GiB."""
    example["slurm"].update(gpus_per_node=1, nodes=1, nodelist=None)
    example["rl"].update(model="Qwen/Qwen3-8B", gradient_checkpointing=True, ppo_max_token_len_per_gpu=16384,
                         lora={"rank": 32, "alpha": 64}, gpu_memory_utilization=0.5)
    field = "rl.gpu_memory_utilization"
    assert field not in errors_of(write_team, example) and field not in warnings_of(write_team, example)
    example["rl"].update(lora={"rank": 32, "alpha": 64, "base_dtype": "fp32"}, gpu_memory_utilization=0.6)
    problem = errors_of(write_team, example)[field]
    assert "vLLM will not start" in problem.message and "~31.9 GiB per GPU" in problem.message
    assert "rl.gpu_memory_utilization: 0.48 or lower" in problem.fix
    example["rl"]["gpu_memory_utilization"] = 0.48
    assert field not in errors_of(write_team, example) and field not in warnings_of(write_team, example)
    # full fine-tuning: Adam's moments come with the first update, so a pool that only the steady state overfills
    # starts and is warned about (1.5B on one GPU at 0.7: 7.2 GiB at vLLM's start, 74.5 GiB while generating)
    example["rl"].update(model="Qwen/Qwen2.5-1.5B-Instruct", lora=None, gpu_memory_utilization=0.7)
    assert field not in errors_of(write_team, example) and field in warnings_of(write_team, example)


def test_rollout_memory_of_a_lora_actor_is_its_frozen_base(example, write_team):
    """With rl.lora the actor holds its base in base_dtype and no optimizer state for it, and the reference policy is
    the actor with the adapter off: a 7B model that warns in full fine-tuning fits beside vLLM's 0.75."""
    example["rl"].update(model="Qwen/Qwen2.5-7B-Instruct", gradient_checkpointing=True, ppo_max_token_len_per_gpu=16384,
                         use_kl_loss=True, gpu_memory_utilization=0.75)
    assert "rl.gpu_memory_utilization" in warnings_of(write_team, example)
    example["rl"]["lora"] = {"rank": 32, "alpha": 64}
    assert "rl.gpu_memory_utilization" not in warnings_of(write_team, example)  # 1.8 GiB of bf16 base per GPU of 8
    example["rl"].update(gpu_memory_utilization=0.88)
    assert "actor 1.8 GiB" in warnings_of(write_team, example)["rl.gpu_memory_utilization"].message
