"""Humanity's Last Exam, text-only: predictions, the official LLM judge, and the official metrics.

It follows centerforaisafety/hle (hle_eval/run_model_predictions.py and run_judge_results.py, MIT):
one system prompt for every question, temperature 0, no length cap below the model's context, the
judge prompt word for word with its strict ExtractedAnswer schema, and dump_metrics()'s formulas and
rounding. Where it differs, the reason is in README_single_node_SFT_PPO.md ("評価の手順と公式との違い"):
  - the score is over *all* text-only questions: no prediction or a failed judgement counts as wrong
    (the official code does too; the 2025 competition's copy divided by the judged ones only);
  - the judge sees the answer only, never the thinking (what the official code gets from an API that
    returns the final message); an output that ended inside its thinking has no answer: wrong, and left
    out of the calibration error, as the official code leaves out a response with no content;
  - the calibration error is None below 100 judged answers, where the official code raises.
"""

import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ValidationError

from llm_bridge.data import read_local
from llm_bridge.evaluate import thinking
from llm_bridge.evaluate.client import ChatClient, Completion, Malformed
from llm_bridge.evaluate.sampling import Sampling
from llm_bridge.evaluate.store import unique_ids
from llm_bridge.rewards.hle import SYSTEM_PROMPT

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


class ExtractedAnswer(BaseModel):
    """The official judge's answer schema, its `strict` field included."""

    extracted_final_answer: str
    reasoning: str
    correct: Literal["yes", "no"]
    confidence: int
    strict: Literal[True]


# What openai's chat.completions.parse(response_format=ExtractedAnswer) sends, as the official judge calls it.
VERDICT_FORMAT = {"type": "json_schema",
                  "json_schema": {"name": "ExtractedAnswer", "strict": True,
                                  "schema": {**ExtractedAnswer.model_json_schema(), "additionalProperties": False}}}


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
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question["question"]}]


# --- predict and judge -----------------------------------------------------------------------

def predict(client: ChatClient, question: dict, sampling: Sampling) -> dict:
    out = client.ask(messages(question), **sampling.server_params("max_completion_tokens"))
    return {"id": question["id"], **thinking.record(out.text, out.reasoning, out.finish_reason)}


def parse_verdict(out: Completion) -> ExtractedAnswer:
    text = out.text.strip()
    if text.startswith("```"):  # some local judges fence their JSON
        text = text.strip("`").removeprefix("json").strip()
    try:
        fields = json.loads(text)
        if isinstance(fields, dict):  # `strict` carries no information: a judge that leaves it out is not wrong
            fields.setdefault("strict", True)
        verdict = ExtractedAnswer.model_validate(fields)
    except ValidationError as error:
        raise Malformed(f"verdict is not the ExtractedAnswer JSON: {error.errors()[0]['msg']}") from error
    except ValueError as error:
        raise Malformed(f"verdict is not JSON: {str(error)[:100]}") from error
    return verdict


def unjudged(prediction: dict, truncated: str | None) -> dict | None:
    """The verdict a prediction gets without the judge, or None when the judge must see it."""
    if not prediction.get("response", "").strip():  # ended inside its thinking, or said nothing
        return {"status": "no_answer", "correct": False}
    if prediction["status"] == "truncated" and truncated == "wrong":
        return {"status": "truncated", "correct": False}
    return None


def judge(client: ChatClient, question: dict, prediction: dict, truncated: str | None = "judge") -> dict:
    verdict = unjudged(prediction, truncated)
    if verdict:
        return {"id": question["id"], **verdict}
    prompt = JUDGE_PROMPT.format(question=question["question"], response=prediction["response"],
                                 correct_answer=question["answer"])
    verdict = client.ask([{"role": "user", "content": prompt}], parse_verdict,
                         max_completion_tokens=4096, response_format=VERDICT_FORMAT)
    return {"id": question["id"], "status": "ok", "correct": verdict.correct == "yes",
            "confidence": verdict.confidence, "extracted_final_answer": verdict.extracted_final_answer,
            "reasoning": verdict.reasoning}


# --- metrics ---------------------------------------------------------------------------------

def calibration_error(confidence: list[float], correct: list[bool], bin_size: int = 100) -> float | None:
    """RMS calibration error as the official calib_err(p='2', beta=100): answers sorted by confidence
    (0-1) with numpy's default argsort, so that ties fall into the same bins as there; bins of
    `bin_size`, the last one taking the remainder and, like there, left out of the sum. None with fewer
    than bin_size answers, where the official code raises an IndexError."""
    if len(confidence) < bin_size:
        return None
    order = np.argsort(np.array(confidence, dtype=float))
    conf, ok = np.array(confidence, dtype=float)[order], np.array(correct, dtype=bool)[order]
    bins = [[i * bin_size, (i + 1) * bin_size] for i in range(len(conf) // bin_size)]
    bins[-1] = [bins[-1][0], len(conf)]
    total = 0.0
    for lo, hi in bins[:-1]:
        total += (hi - lo) / len(conf) * np.square(np.abs(np.nanmean(conf[lo:hi]) - np.nanmean(ok[lo:hi])))
    return float(np.sqrt(total))


def score(questions: list[dict], predictions: dict[str, dict], verdicts: dict[str, dict]) -> dict:
    """metrics.json. accuracy, ci95_half_width and calibration_error carry the official rounding
    (dump_metrics: round(., 2), the interval from the rounded accuracy, 100 * round(calib_err, 2))."""
    n = len(questions)
    ids = {q["id"] for q in questions}
    correct_ids = {i for i, v in verdicts.items() if i in ids and v.get("status") == "ok" and v.get("correct")}
    judged = [verdicts[q["id"]] for q in questions if verdicts.get(q["id"], {}).get("status") == "ok"]
    # numpy's round for the accuracy and the calibration error, Python's for the interval: as upstream, where
    # the first two are numpy floats and the interval goes through math.sqrt. They differ on some halves.
    accuracy = float(round(np.float64(100 * len(correct_ids) / n), 2))
    calib = calibration_error([v["confidence"] / 100 for v in judged], [bool(v["correct"]) for v in judged])
    status = lambda records, q, s: records.get(q["id"], {}).get("status") == s  # noqa: E731
    categories: dict[str, dict] = {}
    for q in questions:
        cat = categories.setdefault(q["category"], {"n": 0, "correct": 0})
        cat["n"] += 1
        cat["correct"] += q["id"] in correct_ids
    for cat in categories.values():
        cat["accuracy"] = round(100 * cat["correct"] / cat["n"], 2)
    return {
        "benchmark": "hle",
        "n_questions": n,
        "accuracy": accuracy,
        "ci95_half_width": round(1.96 * math.sqrt(accuracy * (100 - accuracy) / n), 2),
        "calibration_error": None if calib is None else float(100 * round(np.float64(calib), 2)),
        "n_correct": len(correct_ids),
        "n_judged": len(judged),
        "n_truncated": sum(status(predictions, q, "truncated") for q in questions),
        "n_no_answer": sum(status(verdicts, q, "no_answer") for q in questions),
        "n_truncated_unjudged": sum(status(verdicts, q, "truncated") for q in questions),
        "n_prediction_failed": sum(status(predictions, q, "failed") for q in questions),
        "n_missing": sum(q["id"] not in predictions for q in questions),
        "n_judge_failed": sum(status(verdicts, q, "failed") for q in questions),
        "per_category": dict(sorted(categories.items())),
    }
