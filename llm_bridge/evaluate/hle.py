"""Humanity's Last Exam, text-only: predictions, the official LLM judge, and the official metrics.

Unlike the 2025 competition's scripts, the score is over *all* questions: a question with no
prediction, a truncated answer (finish_reason "length"), or a failed judgement counts as wrong.
The Wald interval and the RMS calibration error are computed as centerforaisafety/hle's
run_judge_results.py does (MIT); calibration, like there, uses the judged answers only.
"""

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from llm_bridge.data import read_local
from llm_bridge.evaluate.client import ChatClient, Completion, Malformed
from llm_bridge.evaluate.store import unique_ids

# The answer formats of the official HLE prompt (system message), one per answer type.
EXACT_FORMAT = ("Your response should be in the following format:\nExplanation: {your explanation for your final answer}\n"
                "Exact Answer: {your succinct, final answer}\nConfidence: {your confidence score between 0% and 100% for your answer}")
CHOICE_FORMAT = ("Your response should be in the following format:\nExplanation: {your explanation for your answer choice}\n"
                 "Answer: {your chosen answer}\nConfidence: {your confidence score between 0% and 100% for your answer}")

# The official judge prompt, word for word: scores are only comparable with the same prompt.
JUDGE_PROMPT = r"""Judge whether the following [response] to [question] is correct or not based on the precise and unambiguous [correct_answer] below.

[question]: {question}

[response]: {response}

Your judgement must be in the format and criteria specified below:

extracted_final_answer: The final exact answer extracted from the [response]. Put the extracted answer as 'None' if there is no exact, final answer to extract from the response.

[correct_answer]: {correct_answer}

reasoning: Explain why the extracted_final_answer is correct or incorrect based on [correct_answer], focusing only on if there are meaningful differences between [correct_answer] and the extracted_final_answer. Do not comment on any background to the problem, do not attempt to solve the problem, do not argue for any answer different than [correct_answer], focus only on whether the answers match.

correct: Answer 'yes' if extracted_final_answer matches the [correct_answer] given above, or is within a small margin of error for numerical problems. Answer 'no' otherwise, i.e. if there if there is any inconsistency, ambiguity, non-equivalency, or if the extracted answer is incorrect.


confidence: The extracted confidence score between 0|\%| and 100|\%| from [response]. Put 100 if there is no confidence score available."""


class Verdict(BaseModel):
    extracted_final_answer: str
    reasoning: str
    correct: Literal["yes", "no"]
    confidence: int


VERDICT_FORMAT = {"type": "json_schema",
                  "json_schema": {"name": "ExtractedAnswer", "strict": True,
                                  "schema": {**Verdict.model_json_schema(), "additionalProperties": False}}}


# --- questions -------------------------------------------------------------------------------

def load_questions(path: Path) -> list[dict]:
    """Text-only questions from train/scripts/data_preprocess/hle.py's parquet, or from raw HLE rows
    (a cais/hle parquet/jsonl: id, question, answer, answer_type, category, image)."""
    questions = []
    for number, row in enumerate(read_local(Path(path).expanduser(), "test")):
        try:
            if "extra_info" in row:  # our verl RL parquet
                info = row["extra_info"]
                questions.append({"id": str(info["id"]), "question": info["question"],
                                  "answer": row["reward_model"]["ground_truth"], "answer_type": info["answer_type"],
                                  "category": info.get("category") or "Other"})
            elif not row.get("image"):
                questions.append({"id": str(row["id"]), "question": row["question"], "answer": str(row["answer"]),
                                  "answer_type": row["answer_type"], "category": row.get("category") or "Other"})
        except (KeyError, TypeError) as exc:
            raise SystemExit(f"ERROR: row {number} of {path} has no {exc} field: not an HLE question.\n"
                             "       Fix: pass test.parquet from train/scripts/data_preprocess/hle.py, or cais/hle's own rows "
                             "(id, question, answer, answer_type).") from None
    if not questions:
        raise SystemExit(f"ERROR: no text-only HLE questions in {path}.\n"
                         "       Fix: python train/scripts/data_preprocess/hle.py, then pass its test.parquet.")
    return unique_ids(questions, path)


def messages(question: dict) -> list[dict]:
    system = CHOICE_FORMAT if question["answer_type"] == "multipleChoice" else EXACT_FORMAT
    return [{"role": "system", "content": system}, {"role": "user", "content": question["question"]}]


# --- predict and judge -----------------------------------------------------------------------

def predict(client: ChatClient, question: dict, max_tokens: int, temperature: float | None) -> dict:
    out = client.ask(messages(question), max_completion_tokens=max_tokens, temperature=temperature)
    record = {"id": question["id"], "status": "truncated" if out.finish_reason == "length" else "ok",
              "response": out.text, "finish_reason": out.finish_reason}
    if out.reasoning:
        record["reasoning"] = out.reasoning
    return record


def parse_verdict(out: Completion) -> Verdict:
    text = out.text.strip()
    if text.startswith("```"):  # some local judges fence their JSON
        text = text.strip("`").removeprefix("json").strip()
    try:
        verdict = Verdict.model_validate_json(text)
    except ValidationError as error:
        raise Malformed(f"verdict is not the ExtractedAnswer JSON: {error.errors()[0]['msg']}") from error
    return verdict


def judge(client: ChatClient, question: dict, prediction: dict) -> dict:
    if prediction["status"] == "truncated":  # never judged: a cut-off answer is not an answer
        return {"id": question["id"], "status": "truncated", "correct": False}
    prompt = JUDGE_PROMPT.format(question=question["question"], response=prediction["response"],
                                 correct_answer=question["answer"])
    verdict = client.ask([{"role": "user", "content": prompt}], parse_verdict,
                         max_completion_tokens=4096, response_format=VERDICT_FORMAT)
    return {"id": question["id"], "status": "ok", "correct": verdict.correct == "yes",
            "confidence": min(max(verdict.confidence, 0), 100), "extracted_final_answer": verdict.extracted_final_answer,
            "reasoning": verdict.reasoning}


# --- metrics ---------------------------------------------------------------------------------

def calibration_error(confidence: list[float], correct: list[bool], bin_size: int = 100) -> float | None:
    """RMS calibration error over bins of `bin_size` answers sorted by confidence (0-1), as HLE's
    calib_err(p='2', beta=100): the last bin takes the remainder and, like there, is left out of the
    sum. Undefined (None) with fewer than bin_size answers, where the official code fails."""
    n = len(confidence)
    if n < bin_size:
        return None
    pairs = sorted(zip(confidence, correct), key=lambda p: p[0])
    bounds = [(i * bin_size, (i + 1) * bin_size) for i in range(n // bin_size)]
    bounds[-1] = (bounds[-1][0], n)
    total = 0.0
    for lo, hi in bounds[:-1]:
        chunk = pairs[lo:hi]
        gap = sum(c for c, _ in chunk) / len(chunk) - sum(ok for _, ok in chunk) / len(chunk)
        total += len(chunk) / n * gap * gap
    return math.sqrt(total)


def score(questions: list[dict], predictions: dict[str, dict], verdicts: dict[str, dict]) -> dict:
    n = len(questions)
    correct_ids = {i for i, v in verdicts.items() if v.get("status") == "ok" and v.get("correct")}
    judged = [verdicts[q["id"]] for q in questions if verdicts.get(q["id"], {}).get("status") == "ok"]
    accuracy = 100 * sum(q["id"] in correct_ids for q in questions) / n
    calib = calibration_error([v["confidence"] / 100 for v in judged], [bool(v["correct"]) for v in judged])
    status = lambda records, q, s: records.get(q["id"], {}).get("status") == s  # noqa: E731
    categories: dict[str, dict] = {}
    for q in questions:
        cat = categories.setdefault(q["category"], {"n": 0, "correct": 0})
        cat["n"] += 1
        cat["correct"] += q["id"] in correct_ids
    for cat in categories.values():
        cat["accuracy"] = 100 * cat["correct"] / cat["n"]
    return {
        "benchmark": "hle",
        "n_questions": n,
        "accuracy": accuracy,
        "ci95_half_width": 1.96 * math.sqrt(accuracy * (100 - accuracy) / n),
        "calibration_error": None if calib is None else 100 * calib,
        "n_correct": len(correct_ids & {q["id"] for q in questions}),
        "n_judged": len(judged),
        "n_truncated": sum(status(predictions, q, "truncated") for q in questions),
        "n_prediction_failed": sum(status(predictions, q, "failed") for q in questions),
        "n_missing": sum(q["id"] not in predictions for q in questions),
        "n_judge_failed": sum(status(verdicts, q, "failed") for q in questions),
        "per_category": dict(sorted(categories.items())),
    }
