"""Thinking apart from the answer, for Qwen3- and DeepSeek-R1-style outputs.

A thinking model writes `<think> ... </think>` and then its answer. Only the answer is what a user
reads, so only the answer is judged or rewarded; the thinking is kept in the record. Three shapes:
  "<think>reasoning</think>answer"   Qwen3: the model opens and closes the block itself
  "reasoning</think>answer"          DeepSeek-R1 and its distills: the chat template opens it in the prompt
  "<think>reasoning..." / "reasoning..." with the block opened in the prompt: the output ended inside
                                     the thinking (length limit); there is no answer.
Like Qwen3's own parsing code, the answer starts after the *last* `</think>`.
Standard library only: the reward function (llm_bridge/rewards/hle.py) runs this inside verl's workers.
"""

import json
from dataclasses import dataclass
from pathlib import Path

OPEN, CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class Split:
    thinking: str | None  # None: the output has no thinking block
    answer: str  # "" when the thinking never closed
    closed: bool  # False only for thinking that never closed

    @property
    def state(self) -> str | None:
        """What the record keeps: None (no thinking), "closed" or "unclosed"."""
        return None if self.thinking is None else ("closed" if self.closed else "unclosed")


def split(text: str, opened_in_prompt: bool = False) -> Split:
    """The thinking and the answer of one output. `opened_in_prompt`: the prompt ends with an open `<think>`."""
    head, sep, tail = text.rpartition(CLOSE)
    if sep:
        return Split(head.replace(OPEN, "", 1).strip(), tail.strip(), True)
    if opened_in_prompt or text.lstrip().startswith(OPEN):
        return Split(text.replace(OPEN, "", 1).strip(), "", False)
    return Split(None, text.strip(), True)


def from_server(content: str | None, reasoning: str | None, finish_reason: str | None = None) -> Split:
    """A chat completion's message. With vLLM's --reasoning-parser the thinking arrives apart, in
    `reasoning_content`; without it the tags are still in the text. No content after some reasoning
    and a stop at the length limit: the output ended inside the thinking."""
    if reasoning is not None and reasoning.strip():
        inner = split(content or "")  # a parser that missed a second block
        thinking = reasoning.strip() if inner.thinking is None else f"{reasoning.strip()}\n{inner.thinking}"
        closed = bool(content and content.strip()) or finish_reason != "length"
        return Split(thinking, inner.answer, closed and inner.closed)
    return split(content or "")


def prompt_opens_thinking(prompt_tail: str) -> bool:
    """Whether a rendered prompt leaves a thinking block open for the model (DeepSeek-R1's template)."""
    _, found, after = prompt_tail.rpartition(OPEN)
    return bool(found) and CLOSE not in after


def model_thinks(model_dir: Path) -> bool:
    """Whether a Hugging Face model directory's chat template or added tokens know `</think>` (Qwen3,
    DeepSeek-R1 and its distills do; transformers 5 keeps the template in chat_template.jinja and the
    added tokens in tokenizer.json, older versions both in tokenizer_config.json)."""
    model_dir = Path(model_dir).expanduser()

    def read(name: str):
        try:
            return json.loads((model_dir / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    template = model_dir / "chat_template.jinja"
    if template.is_file() and CLOSE in template.read_text(encoding="utf-8", errors="replace"):
        return True
    config, tokenizer = read("tokenizer_config.json"), read("tokenizer.json")
    added = [t.get("content") for t in (config.get("added_tokens_decoder") or {}).values() if isinstance(t, dict)]
    added += [t.get("content") for t in tokenizer.get("added_tokens") or [] if isinstance(t, dict)]
    return CLOSE in added or CLOSE in json.dumps(config.get("chat_template") or "")


def record(text: str | None, reasoning: str | None, finish_reason: str | None, opened_in_prompt: bool = False) -> dict:
    """The fields of a prediction record: the answer (what is judged), the thinking, and whether the
    output ran into the length limit."""
    parts = from_server(text, reasoning, finish_reason) if reasoning else split(text or "", opened_in_prompt)
    fields = {"status": "truncated" if finish_reason == "length" else "ok", "response": parts.answer,
              "finish_reason": finish_reason}
    if parts.thinking is not None:
        fields.update(reasoning=parts.thinking, thinking=parts.state)
    return fields
