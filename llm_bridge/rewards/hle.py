"""Reward for Humanity's Last Exam questions in verl RL format: normalised exact match, 1.0 or 0.0.

Point `rl.reward_function` at this file. verl calls `compute_score` for every response; rows whose
data_source is not "cais/hle" go to verl's built-in scorer, so HLE can be mixed with e.g. GSM8K.

The answer is what follows the last "Exact Answer:" or "Answer:" line, as the HLE prompt asks. Multiple-
choice answers compare by letter ("B", "(B)", "B. 42" all mean B); other answers compare after
lower-casing and removing punctuation, articles and extra spaces. This is stricter than the official
LLM judge (no equivalence of "0.5" and "1/2"): a training signal, not the benchmark score.
"""

import re
import string

DATA_SOURCE = "cais/hle"
_ANSWER = re.compile(r"^\s*(?:\*\*)?(?:exact\s+)?answer(?:\*\*)?\s*:\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
_CHOICE = re.compile(r"^\(?([A-Z])\)?(?:[.:)\s]|$)")


def extract_answer(response: str) -> str | None:
    matches = _ANSWER.findall(response.split("</think>")[-1])
    return matches[-1] if matches else None


def normalise(text: str) -> str:
    text = text.strip().strip("*").lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def is_correct(prediction: str, ground_truth: str, answer_type: str | None = None) -> bool:
    if answer_type == "multipleChoice" or _CHOICE.fullmatch(ground_truth.strip()):
        got, want = _CHOICE.match(prediction.strip().strip("*")), _CHOICE.match(ground_truth.strip())
        if got and want:
            return got.group(1) == want.group(1)
    return normalise(prediction) == normalise(ground_truth)


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    if data_source != DATA_SOURCE:
        from verl.utils.reward_score import default_compute_score

        return default_compute_score(data_source, solution_str, ground_truth, extra_info)
    answer = extract_answer(solution_str)
    answer_type = (extra_info or {}).get("answer_type")
    return 1.0 if answer is not None and is_correct(answer, str(ground_truth), answer_type) else 0.0
