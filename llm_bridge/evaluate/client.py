"""One client for every OpenAI-compatible endpoint: the model under test (vllm serve) and the judge
(OpenAI's o3-mini as the 2025 competition used, or a local vLLM judge).

The key is read from an environment variable, never from argv or a file, and never printed.
Timeouts, HTTP errors and malformed answers are retried with backoff; after the last try the
item is recorded as failed (and a rerun tries it again), never silently counted.
"""

import os
import re
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import openai

T = TypeVar("T")
LOCAL_KEY = "EMPTY"  # vllm serve without --api-key accepts any key


class Malformed(ValueError):
    """The endpoint answered, but not in the form asked for."""


@dataclass
class Completion:
    text: str
    finish_reason: str | None
    reasoning: str | None = None


@dataclass
class Endpoint:
    base_url: str | None  # None: api.openai.com
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 600.0
    retries: int = 3
    backoff_s: float = 1.0

    def api_key(self) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            raise SystemExit("ERROR: --api-key-env takes the *name* of an environment variable (e.g. OPENAI_API_KEY).")
        key = os.environ.get(self.api_key_env)
        if key:
            return key
        if self.base_url:
            return LOCAL_KEY
        raise SystemExit(f"ERROR: ${self.api_key_env} is not set, and the judge is api.openai.com.\n"
                         f"       Fix: export {self.api_key_env}=... in your shell (not on a command line you share), "
                         "or point --judge-url at a local vLLM server.")


class ChatClient:
    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self._client = openai.OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key(),
                                     timeout=endpoint.timeout_s, max_retries=0)

    def complete(self, messages: list[dict], **params) -> Completion:
        params = {k: v for k, v in params.items() if v is not None}
        response = self._client.chat.completions.create(model=self.endpoint.model, messages=messages, **params)
        if not response.choices:
            raise Malformed("no choices in the response")
        choice = response.choices[0]
        reasoning = getattr(choice.message, "reasoning_content", None) or getattr(choice.message, "reasoning", None)
        return Completion(choice.message.content or "", choice.finish_reason, reasoning)

    def ask(self, messages: list[dict], parse: Callable[[Completion], T] = lambda out: out, **params) -> T:
        """complete() then parse(), retried on timeouts, server errors and answers parse() rejects."""
        attempts = self.endpoint.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return parse(self.complete(messages, **params))
            except (Malformed, openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError,
                    openai.InternalServerError):
                if attempt == attempts:
                    raise
                time.sleep(self.endpoint.backoff_s * 2 ** (attempt - 1))
        raise AssertionError("unreachable")


def describe(error: BaseException) -> str:
    """A short reason for a failed item; never contains the key (openai's errors do not echo it)."""
    return f"{type(error).__name__}: {str(error)[:300]}"
