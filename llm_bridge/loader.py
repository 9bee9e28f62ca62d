"""Read team.yaml and turn every problem in it into a `Problem` — all of them at once."""

import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .config import TeamConfig
from .problems import Problem

_PLACEHOLDERS = [
    (re.compile(r"YOU_TEAM|YOUR_[A-Z_]+|CHANGE_?ME"), "a placeholder from the seed recipe"),
    (re.compile(r"/path/to/"), "a '/path/to/' placeholder"),
    (re.compile(r"<[^<>]+>"), "a '<...>' placeholder"),
]

# Token shapes. The fix never echoes the value itself.
_SECRETS = [
    (re.compile(r"hf_[A-Za-z0-9]{30,}"), "a Hugging Face token", "run `huggingface-cli login` (or export HF_TOKEN) instead"),
    (re.compile(r"sk-[A-Za-z0-9_-]{20,}"), "an OpenAI-style API key", "export OPENAI_API_KEY in your shell instead"),
    (re.compile(r"(?<![0-9a-f])[0-9a-f]{40}(?![0-9a-f])"), "a W&B API key", "run `wandb login` (or export WANDB_API_KEY) instead"),
]


def secret_shape(text: str) -> tuple[str, str] | None:
    """(what it looks like, the fix) if text holds a token-shaped value, else None."""
    for pattern, what, fix in _SECRETS:
        if pattern.search(text):
            return what, fix
    return None


_SECRET_KEY = re.compile(r"(^|_)(token|api_?key|secret|password)s?$", re.IGNORECASE)


def _walk(node: Any, path: tuple = ()):
    """Yield (path, value) for every leaf of a YAML tree; path is the tuple of keys and list indices."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, path + (str(key),))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, path + (str(index),))
    else:
        yield path, node


def _dotted(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _scan_secrets(text: str, data: Any) -> list[Problem]:
    problems, reported = [], set()
    for path, value in _walk(data):
        if path and _SECRET_KEY.search(path[-1]):
            problems.append(Problem(_dotted(path), "secrets never go in team.yaml (it is copied, shared and committed)",
                                    "delete this key; scripts read tokens from your login or environment"))
            reported.add(str(value))
            continue
        for pattern, what, fix in _SECRETS:
            if isinstance(value, str) and pattern.search(value):
                problems.append(Problem(_dotted(path), f"looks like {what} (value not shown)", f"delete it and {fix}"))
                reported.add(value)
    for number, line in enumerate(text.splitlines(), start=1):
        for pattern, what, fix in _SECRETS:
            match = pattern.search(line)
            if match and not any(match.group(0) in value for value in reported):
                problems.append(Problem(f"line {number}", f"looks like {what} (value not shown)", f"delete it and {fix}"))
    return problems


def _scan_placeholders(data: Any) -> list[Problem]:
    problems = []
    for path, value in _walk(data):
        if not isinstance(value, str):
            continue
        for pattern, what in _PLACEHOLDERS:
            if pattern.search(value):
                problems.append(Problem(_dotted(path), f"{value!r} is {what}",
                                        "replace it with your team's real value (see templates/team.example.yaml)"))
                break
    return problems


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] | None = TeamConfig
    for part in loc:
        field = model.model_fields.get(str(part)) if model else None
        annotation = field.annotation if field else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return model


def _from_validation_error(exc: ValidationError, skip: set[str]) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        field = _dotted(loc)
        if field in skip:
            continue
        kind = err["type"]
        if kind == "extra_forbidden":
            parent = _model_at(loc[:-1])
            known = list(parent.model_fields) if parent else []
            guess = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
            fix = f"did you mean '{guess[0]}'?" if guess else f"known keys here: {', '.join(known)}"
            problems.append(Problem(field, "unknown key", fix))
        elif kind == "missing":
            problems.append(Problem(field, "required but missing", "add it; templates/team.example.yaml shows every key"))
        elif kind == "value_error":
            message, _, fix = str(err["ctx"]["error"]).partition(" Fix: ")
            problems.append(Problem(field, message.rstrip(". "), fix))
        else:
            got = err.get("input")
            shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
            problems.append(Problem(field, err["msg"] + shown))
    return problems


def load(path: Path) -> tuple[TeamConfig | None, list[Problem]]:
    """Parse and validate a team config. Returns the config (None if invalid) and every problem found."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return None, [Problem(str(path), f"cannot read: {exc.strerror}", "pass --team PATH to an existing team.yaml")]
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(yaml)"
        return None, [Problem(where, f"not valid YAML: {getattr(exc, 'problem', exc)}", "check indentation and quoting")]
    if not isinstance(data, dict):
        return None, [Problem("(top level)", "must be a mapping of sections", "start from templates/team.example.yaml")]

    problems = _scan_secrets(text, data) + _scan_placeholders(data)
    try:
        config = TeamConfig.model_validate(data)
    except ValidationError as exc:
        problems += _from_validation_error(exc, skip={p.field for p in problems})
        return None, problems
    return (None if problems else config), problems
