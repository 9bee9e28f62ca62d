"""Reward for Humanity's Last Exam questions in verl RL format: 1.0 when the answer means the reference, else 0.0.

Point `rl.reward_function` at this file. verl calls `compute_score` for every response; rows whose
data_source is not "cais/hle" go to verl's built-in scorer, so HLE can be mixed with e.g. GSM8K.

The answer is what follows the last "Answer:" (or "Exact Answer:", "Final Answer:") line after the thinking, as the
official prompt asks. A response whose thinking never closed has no answer and scores 0, whatever it
wrote inside. Answers are compared by meaning where that can be decided locally (signs, fractions,
decimals, exponents, LaTeX, units; a choice letter only when it stands alone): llm_bridge/rewards/answers.py.
Anything else scores 0, so the reward is stricter than the official LLM judge: it is a training
signal, and a false match would train the model towards wrong answers.
"""

import re

from llm_bridge.evaluate.thinking import split
from llm_bridge.rewards.answers import same

DATA_SOURCE = "cais/hle"

# centerforaisafety/hle run_model_predictions.py, since "Unify system prompt": one prompt for every question.
SYSTEM_PROMPT = ("Your response should be in the following format:\nExplanation: {your explanation for your answer choice}\n"
                 "Answer: {your chosen answer}\nConfidence: {your confidence score between 0% and 100% for your answer}")

_ANSWER = re.compile(r"^[ \t>#*_-]*(?:\*\*|__)?(?:exact[ \t]+|final[ \t]+)?answer[ \t]*(?:\*\*|__)?[ \t]*:[ \t]*(.*?)[ \t]*$",
                     re.IGNORECASE | re.MULTILINE)


def extract_answer(response: str, opened_in_prompt: bool = False) -> str | None:
    """The final answer line's text, or None (no answer line, an empty one, or thinking that never closed)."""
    parts = split(response, opened_in_prompt)
    if not parts.closed:
        return None
    found = [m.strip().strip("*_").strip() for m in _ANSWER.findall(parts.answer)]
    return found[-1] if found and found[-1] else None


def is_correct(prediction: str, ground_truth: str, answer_type: str | None = None) -> bool:
    return same(prediction, ground_truth, answer_type)


def compute_score(data_source, solution_str, ground_truth, extra_info=None, thinking_opened_in_prompt=False, **kwargs):
    """thinking_opened_in_prompt: set it (reward.custom_reward_function.reward_kwargs) for a chat template
    that opens `<think>` in the prompt (DeepSeek-R1 and its distills), so that an unfinished response,
    which then has no tags at all, is not read as an answer."""
    if data_source != DATA_SOURCE:
        from verl.utils.reward_score import default_compute_score

        return default_compute_score(data_source, solution_str, ground_truth, extra_info)
    answer = extract_answer(solution_str, thinking_opened_in_prompt)
    answer_type = (extra_info or {}).get("answer_type")
    return 1.0 if answer is not None and is_correct(answer, str(ground_truth), answer_type) else 0.0
