"""The HLE reward (llm_bridge/rewards/hle.py): answers compared by meaning, never fooled into a match.

A false positive rewards a wrong answer and trains the model towards it, so the labelled pairs in
tests/data/hle_answer_pairs.tsv must give none; the misses (false negatives) are listed here by name,
so that a change that adds or removes one is seen. `pytest tests/test_hle_reward.py -s` prints the table.
"""

from collections import Counter
from pathlib import Path

import pytest

from llm_bridge.rewards.answers import choice, same
from llm_bridge.rewards.hle import compute_score, extract_answer

PAIRS = Path(__file__).parent / "data" / "hle_answer_pairs.tsv"
# Left to the LLM judge on purpose: algebra, units this file does not know, a choice inside a sentence,
# chemistry names, unordered sets. Each is a miss (reward 0 for a right answer), never a false match.
KNOWN_MISSES = {("2\\sqrt{2}", "\\sqrt{8}"), ("3 apples", "3"), ("I think it is B", "B"), ("CO2", "carbon dioxide"),
                ("\\{1, 2\\}", "\\{2, 1\\}"), ("a. the first one", "A")}


def pairs() -> list[tuple[str, bool, str, str, str]]:
    rows = []
    for line in PAIRS.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            kind, label, answer_type, prediction, reference = line.split("\t")
            rows.append((kind, label == "1", answer_type, prediction, reference))
    return rows


def agreement_table() -> tuple[str, Counter]:
    table: dict[str, Counter] = {}
    for kind, truth, answer_type, prediction, reference in pairs():
        verdict = same(prediction, reference, answer_type)
        key = ("TP" if truth else "FP") if verdict else ("FN" if truth else "TN")
        table.setdefault(kind, Counter())[key] += 1
    total = sum(table.values(), Counter())
    lines = ["| kind | pairs | same by hand | agree | false positives | false negatives |", "|---|---|---|---|---|---|"]
    for kind, c in [*table.items(), ("all", total)]:
        lines.append(f"| {kind} | {sum(c.values())} | {c['TP'] + c['FN']} | {c['TP'] + c['TN']} | {c['FP']} | {c['FN']} |")
    return "\n".join(lines), total


def test_no_false_positive_and_only_the_known_misses_on_the_labelled_pairs():
    table, total = agreement_table()
    print("\n" + table)
    false_positives = [(p, r) for _, truth, t, p, r in pairs() if not truth and same(p, r, t)]
    misses = {(p, r) for _, truth, t, p, r in pairs() if truth and not same(p, r, t)}
    assert false_positives == []
    assert misses == KNOWN_MISSES
    assert sum(total.values()) >= 130 and total["TP"] >= 60 and total["TN"] >= 50  # both sides well covered


@pytest.mark.parametrize("prediction, reference", [
    ("1", "-1"), ("12", "1/2"), ("25", "2.5"), ("10^{-3}", "10^3"), ("", ""), ("...", "?"), ("**", "**"),
    ("1,2", "12"), ("0.3", "1/3"), ("2x", "2"), ("2 pi", "2"), ("42 maybe", "42"), ("5 km", "5 m"), ("-0", "0.1"),
    ("\\frac{1}{0}", "1"), ("[1, 2]", "(1, 2)"), ("0.5", "50%"), ("x = 6", "5"), ("e", "2.718"),
])
def test_the_reported_and_other_false_matches_are_gone(prediction, reference):
    assert not same(prediction, reference, "exactMatch")


@pytest.mark.parametrize("answer, letter", [("B", "B"), ("(B)", "B"), ("B. 42", "B"), ("Option C", "C"), ("a", "A"),
                                            ("A lot depends", None), ("An electron", None), ("B and C", None),
                                            ("I think B", None), ("", None), ("All of the above", None)])
def test_a_choice_letter_counts_only_standing_alone(answer, letter):
    assert choice(answer) == letter


def test_nothing_inside_thinking_is_scored():
    mc = {"answer_type": "multipleChoice"}
    assert extract_answer("<think>Answer: A is tempting") is None  # unclosed: the output ran out
    assert extract_answer("<think>Answer: A?</think>\nExplanation: no.\nAnswer: B\nConfidence: 80%") == "B"
    assert extract_answer("Answer: A?</think>Answer: C") == "C"  # R1 style: the prompt opened the block
    assert extract_answer("Explanation: x\nAnswer: A", opened_in_prompt=True) is None
    assert extract_answer("Explanation: x\nAnswer:\nConfidence: 10%") is None  # an empty answer line
    assert extract_answer("**Answer:** B\n**Confidence:** 90%") == "B"
    assert extract_answer("<think>...</think>**Final Answer:** $\\boxed{7}$") == "$\\boxed{7}$"
    assert compute_score("cais/hle", "<think>Answer: B</think>Answer: A lot depends", "A", mc) == 0.0
    assert compute_score("cais/hle", "<think>hmm</think>Explanation: y\nAnswer: (A)", "A", mc) == 1.0
    assert compute_score("cais/hle", "<think>Answer: 42", "42", {"answer_type": "exactMatch"}) == 0.0
    assert compute_score("cais/hle", "Exact Answer: $\\frac{1}{2}$", "0.5", {"answer_type": "exactMatch"}) == 1.0
