"""How a model under test is sampled, for vLLM in this process and for an OpenAI-compatible server alike."""

import argparse
from dataclasses import dataclass

MODEL_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


@dataclass(frozen=True)
class Sampling:
    """`from_model`: the model's generation_config.json (as vLLM's server does) instead of greedy;
    `temperature`/`top_p` override either. `max_tokens` None: up to the model's context (vLLM's
    max_model_len), which is what the official HLE code asks for."""

    max_tokens: int | None
    from_model: bool = False
    temperature: float | None = None
    top_p: float | None = None

    @property
    def effective_temperature(self) -> float | None:
        """The temperature asked for; None leaves it to the model's generation_config."""
        if self.temperature is not None:
            return self.temperature
        return None if self.from_model else 0.0

    def server_params(self, length_key: str = "max_tokens") -> dict:
        """The request parameters for an OpenAI-compatible server (left out: the server's default)."""
        params = {"temperature": self.effective_temperature, "top_p": self.top_p, length_key: self.max_tokens}
        return {k: v for k, v in params.items() if v is not None}

    def vllm_params(self, llm):
        from vllm import SamplingParams

        base = {}
        if self.from_model:  # vLLM's LLM.chat uses these only when no SamplingParams are passed at all
            defaults = llm.get_default_sampling_params()
            base = {k: getattr(defaults, k) for k in MODEL_SAMPLING_KEYS}
        overrides = {k: v for k, v in (("temperature", self.effective_temperature), ("top_p", self.top_p)) if v is not None}
        return SamplingParams(**{**base, **overrides}, max_tokens=self.max_tokens)


def length_arg(*words: str):
    """An argparse type for a response length: a positive number of tokens, or one of `words`
    ('model' = up to the model's context)."""
    def parse(text: str) -> int | str:
        if text in words:
            return text
        if text.isdigit() and int(text) > 0:
            return int(text)
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of tokens, or 'model' (up to the model's context)")

    return parse


def share_of_gpu(text: str) -> float:
    """An argparse type for vLLM's gpu_memory_utilization: a share of the GPU above 0 and at most 1."""
    try:
        share = float(text)
    except ValueError:
        share = 0.0
    if not 0 < share <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a share of the GPU's memory above 0 and at most 1, e.g. 0.3")
    return share


def max_tokens(length: int | str) -> int | None:
    """A parsed length as vLLM and the server take it: 'model' is None (no cap below the context)."""
    return None if length == "model" else length
