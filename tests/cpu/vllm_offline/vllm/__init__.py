"""vLLM's offline API on a CPU, test-only: the `LLM` and `SamplingParams` that llm_bridge/evaluate/offline.py
(`llm-bridge generate`, `llm-bridge eval`) calls, answered by transformers.

vLLM does not run on a CPU here. With tests/cpu/vllm_offline first on PYTHONPATH, `import vllm` finds this
module instead, so the CLI's whole path (arguments, chat template, chunks, the resumable jsonl) runs for real
and only the engine differs. Its arguments are checked as vLLM's engine checks them (a parallel size is an
int >= 1, max_model_len an int or None, gpu_memory_utilization a share in (0, 1]); one prompt at a time, greedy at
temperature 0, fp32.
"""

import sys
from dataclasses import dataclass
from types import SimpleNamespace

__version__ = "0.0.0+cpu-stand-in"


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    max_tokens: int | None = 16
    seed: int | None = None


class LLM:
    def __init__(self, model: str, tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1,
                 max_model_len: int | None = None, trust_remote_code: bool = False,
                 distributed_executor_backend: str | None = None, gpu_memory_utilization: float = 0.9, **_ignored):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        for name, value in (("tensor_parallel_size", tensor_parallel_size), ("pipeline_parallel_size", pipeline_parallel_size)):
            if not isinstance(value, int) or value < 1:
                raise TypeError(f"{name} must be an int >= 1, got {value!r}")
        if not isinstance(gpu_memory_utilization, float) or not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be a float in (0, 1], got {gpu_memory_utilization!r}")
        if max_model_len is not None and not isinstance(max_model_len, int):
            raise TypeError(f"max_model_len must be an int or None, got {max_model_len!r}")
        self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32, trust_remote_code=trust_remote_code)
        self.max_model_len = max_model_len or self.model.config.max_position_embeddings
        self.args = dict(tensor_parallel_size=tensor_parallel_size, pipeline_parallel_size=pipeline_parallel_size,
                         max_model_len=max_model_len, distributed_executor_backend=distributed_executor_backend,
                         gpu_memory_utilization=gpu_memory_utilization)
        print(f"stand-in engine args: {self.args}", file=sys.stderr)  # what the recipe asked vLLM for

    def get_tokenizer(self):
        return self.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        config = self.model.generation_config
        return SamplingParams(**{key: value for key in ("temperature", "top_p", "top_k", "repetition_penalty")
                                 if (value := getattr(config, key, None)) is not None})

    def chat(self, conversations: list[list[dict]], sampling_params: SamplingParams, use_tqdm: bool = True):
        import torch

        outputs = []
        for messages in conversations:
            prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                        return_dict=True)["input_ids"]
            room = self.max_model_len - len(prompt)
            limit = room if sampling_params.max_tokens is None else min(sampling_params.max_tokens, room)
            greedy = sampling_params.temperature == 0
            with torch.no_grad():
                tokens = self.model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                             max_new_tokens=limit, do_sample=not greedy,
                                             **({} if greedy else {"temperature": sampling_params.temperature,
                                                                   "top_p": sampling_params.top_p}))
            ids = tokens[0, len(prompt):].tolist()
            stopped = bool(ids) and ids[-1] == self.tokenizer.eos_token_id
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            outputs.append(SimpleNamespace(prompt_token_ids=prompt, outputs=[SimpleNamespace(
                text=text, token_ids=ids, finish_reason="stop" if stopped else "length")]))
        return outputs
