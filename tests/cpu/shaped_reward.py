"""A shaped GSM8K reward for the CPU pipeline: verl's own gsm8k score plus 0.1 x the share of digits in
the response. A random tiny model never earns the real reward, so without the shaping every GRPO
advantage is 0 and the policy-gradient path would go untested."""

from verl.utils.reward_score import gsm8k


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    digits = sum(ch.isdigit() for ch in solution_str) / max(len(solution_str), 1)
    return gsm8k.compute_score(solution_str, ground_truth) + 0.1 * digits
