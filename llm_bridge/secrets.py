"""What a secret looks like, so that none is written into team.yaml or a command line, and none is ever shown.

Tokens with a prefix are recognised anywhere. W&B's old keys are 40 lowercase hex digits, the same shape as a
git commit hash, so such a string counts as a key only where the words around it say so (a key named
api_key, a `wandb` section, WANDB_API_KEY=...); a commit hash in a comment or a `--revision` is left alone.
Messages are stricter than detection: `hide` blanks every token shape, bare hex included, before anything
built from a user's file or arguments is printed.
"""

import re

_WANDB_FIX = "run `wandb login` (or export WANDB_API_KEY) instead"
_TOKENS = [
    (re.compile(r"hf_[A-Za-z0-9]{30,}"), "a Hugging Face token", "run `hf auth login` (or export HF_TOKEN) instead"),
    (re.compile(r"sk-[A-Za-z0-9_-]{20,}"), "an OpenAI-style API key", "export OPENAI_API_KEY in your shell instead"),
    (re.compile(r"wandb_v1_[A-Za-z0-9_]{40,}"), "a W&B API key", _WANDB_FIX),  # W&B's 86-character keys (2025-)
    (re.compile(r"(?<![A-Za-z0-9])local-[0-9a-f]{40}(?![0-9a-fA-F])"), "a W&B API key (W&B server)", _WANDB_FIX),
]
_HEX40 = re.compile(r"(?<![0-9A-Za-z])[0-9a-f]{40}(?![0-9A-Za-z])")
_KEY_WORDS = re.compile(r"wandb|api[_-]?key|token|secret|passw|netrc|auth", re.IGNORECASE)


def find(text: str, context: str = "") -> tuple[str, str] | None:
    """(what it looks like, the fix) if text holds a token, else None. context: the words around it (a YAML key's
    dotted path, the argument before it) that tell a W&B key from a commit hash."""
    for pattern, what, fix in _TOKENS:
        if pattern.search(text):
            return what, fix
    if _HEX40.search(text) and _KEY_WORDS.search(_HEX40.sub(" ", text) + " " + context):
        return "a W&B API key", _WANDB_FIX
    return None


def hide(text: str) -> str:
    """text with every token shape replaced by a placeholder (40-hex strings too: a message never needs one)."""
    for pattern, _, _ in _TOKENS:
        text = pattern.sub("<hidden>", text)
    return _HEX40.sub("<hidden>", text)
