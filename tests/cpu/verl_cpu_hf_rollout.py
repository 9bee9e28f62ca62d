"""A transformers-based rollout for verl 0.9.1 (`actor_rollout_ref.rollout.name=hf_cpu`), test-only.

verl 0.9.1 registers only vLLM, SGLang and TRT-LLM rollouts, none of which runs on a CPU here. This
module registers one more through verl's own registries (`_ROLLOUT_REGISTRY`, `RolloutReplicaRegistry`):
  - HFReplica launches one Ray actor per replica (`HFServer`) that answers the agent loop's
    `generate()` with `transformers.generate` (fp32, sampling, token log-probs);
  - ServerAdapter lives in each hybrid training worker and streams the trainer's weights to that actor
    on every `update_weights`, the way vLLM's adapter feeds its server.
Lifecycle calls (sleep, wake-up, KV cache) have nothing to free on a CPU and are no-ops. Requests that arrive
while the replica is busy are answered together, one batched `generate` per prompt length (no padding, so a row
computes what it would alone); each request samples from its own generator, seeded by the rollout seed, its prompt
and which draw of that prompt it is, so a seed gives the same samples however the requests were batched.
"""

import asyncio
import json
import logging
import os
import zlib

import ray
import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
from verl.workers.rollout.base import _ROLLOUT_REGISTRY, BaseRollout
from verl.workers.rollout.replica import RolloutReplica, RolloutReplicaRegistry, TokenOutput

logger = logging.getLogger(__name__)
NAME = "hf_cpu"


def _server_name(replica_rank: int) -> str:
    return f"{NAME}_server_{replica_rank}"


def _model_path(model_config) -> str:
    return getattr(model_config, "local_path", None) or model_config.path


class HFServer:
    """One replica's generation server: a transformers model on the CPU."""

    def __init__(self, config, model_config, replica_rank: int):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = _model_path(model_config)
        self.config = config
        self.replica_rank = replica_rank
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
        self.model.eval()
        # as vLLM, rollout.seed fixes the sampling; here per request, so the order requests arrive in changes nothing
        self.seed, self.draws = int(getattr(config, "seed", 42)) + max(replica_rank, 0), {}
        self.global_steps = None
        self.lock = asyncio.Lock()
        self.queue = []  # (prompt_ids, sampling_params, draw, future) not yet generated
        self.base = {}  # the base weights under a LoRA adapter, kept at the first fold
        self.adapter_updates = 0

    def _generate(self, prompts: list[list[int]], draws: list[int], sampling_params: dict) -> list[TokenOutput]:
        """Prompts of one length, sampled together: one row each."""
        prompt_length, response_length = self.config.prompt_length, self.config.response_length
        length = len(prompts[0])
        max_new = sampling_params.get("max_tokens") or min(response_length, prompt_length + response_length - length)
        temperature = float(sampling_params.get("temperature", 1.0))
        top_k = int(sampling_params.get("top_k", -1))  # -1 or 0: no top-k
        eos = self.tokenizer.eos_token_id
        # as vLLM's server: rollout.ignore_eos samples on past the end-of-sequence token, to max_new tokens
        ignore_eos = bool(sampling_params.get("ignore_eos", getattr(self.config, "ignore_eos", False)))
        kwargs = dict(
            max_new_tokens=max(1, max_new),
            do_sample=False,  # sampling, when asked, is SampleEachRow's: transformers' one draw per batch is not per request
            eos_token_id=None if ignore_eos else eos,
            pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos,
            return_dict_in_generate=True,
        )
        if temperature > 0:
            seeds = [zlib.crc32(repr((self.seed, prompt, draw)).encode()) for prompt, draw in zip(prompts, draws)]
            kwargs["logits_processor"] = LogitsProcessorList([SampleEachRow(
                seeds, temperature, top_k, float(sampling_params.get("top_p", 1.0)))])
        with torch.no_grad():
            out = self.model.generate(torch.tensor(prompts), attention_mask=torch.ones(len(prompts), length, dtype=torch.long),
                                      **kwargs)
        outputs = []
        for prompt, sequence in zip(prompts, out.sequences[:, length:].tolist()):
            tokens = sequence[: sequence.index(eos) + 1] if eos in sequence and not ignore_eos else sequence
            log_probs = self._log_probs(prompt, tokens, temperature) if sampling_params.get("logprobs") else None
            outputs.append(TokenOutput(token_ids=tokens, log_probs=log_probs, stop_reason="completed",
                                       extra_fields={"global_steps": self.global_steps}))
        return outputs

    def _log_probs(self, prompt: list[int], tokens: list[int], temperature: float) -> list[float]:
        """The response's log-probs from a forward pass of this row alone: the same whatever batch it was sampled in
        (batched and single-row matrix products round differently, ~1e-6), so runs that draw the same samples get
        the same old log-probs."""
        with torch.no_grad():
            logits = self.model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1: -1].float()
        if temperature > 0:  # verl asks vLLM for processed_logprobs: those of the distribution it samples from
            logits = logits / temperature
        return torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(tokens)[:, None])[:, 0].tolist()

    def _generate_batch(self, batch: list[tuple]) -> list[TokenOutput]:
        """Every queued (prompt_ids, sampling_params, draw, future), in order: one generate per prompt length and
        sampling."""
        groups = {}
        for index, (prompt, params, _, _) in enumerate(batch):
            groups.setdefault((len(prompt), json.dumps(params, sort_keys=True, default=str)), []).append(index)
        outputs = [None] * len(batch)
        for indices in groups.values():
            prompts, params, draws, _ = zip(*(batch[i] for i in indices))
            for i, output in zip(indices, self._generate(list(prompts), list(draws), params[0])):
                outputs[i] = output
        return outputs

    async def generate(self, request_id, prompt_ids, sampling_params, image_data=None, video_data=None, **kwargs):
        prompt_ids = list(prompt_ids)
        draw = self.draws[tuple(prompt_ids)] = self.draws.get(tuple(prompt_ids), -1) + 1  # the k-th sample of this prompt
        future = asyncio.get_running_loop().create_future()
        self.queue.append((prompt_ids, dict(sampling_params), draw, future))
        async with self.lock:
            if not future.done():  # no earlier batch took this request: answer everything queued until now
                batch, self.queue = self.queue, []
                try:
                    outputs = await asyncio.to_thread(self._generate_batch, batch)
                except Exception as error:
                    for *_, waiting in batch:
                        waiting.set_exception(error)
                else:
                    for (*_, waiting), output in zip(batch, outputs):
                        waiting.set_result(output)
        return await future

    async def update_weights(self, state_dict: dict, peft_config: dict | None = None):
        async with self.lock:
            if peft_config is not None and any(".lora_A." in name for name in state_dict):
                return self._fold_adapter(state_dict, peft_config)
            result = self.model.load_state_dict(state_dict, strict=False)
            self.base.clear()  # new base weights: the next adapter folds onto these
            known = set(self.model.state_dict())
            if not known.intersection(state_dict):
                raise RuntimeError(f"{NAME}: no weight name matched the model: {sorted(state_dict)[:5]} ...")
            if result.unexpected_keys:
                logger.warning("%s: unexpected weights ignored: %s", NAME, result.unexpected_keys[:5])

    def _fold_adapter(self, adapter: dict, peft_config) -> None:
        """What vLLM's LoRA path computes, folded into the weights: W = W_base + (alpha / r) * B @ A for every module
        the adapter covers. W_base is kept from the first fold, so each step's adapter replaces the last one's."""
        get = peft_config.get if isinstance(peft_config, dict) else lambda key: getattr(peft_config, key)
        scale = float(get("lora_alpha")) / float(get("r"))
        weights = self.model.state_dict()
        folded, size = 0, 0.0
        for name, a in adapter.items():
            if ".lora_A." not in name:
                continue
            module = name.split(".lora_A.")[0].removeprefix("base_model.model.")
            key = f"{module}.weight"
            if key not in weights:
                raise RuntimeError(f"{NAME}: adapter module {module} is not in the model")
            b = adapter[name.replace(".lora_A.", ".lora_B.")]
            base = self.base.setdefault(key, weights[key].clone())
            weights[key].copy_(base + scale * (b @ a))
            # the fingerprint in bf16, the dtype verl's merger saves adapters in, so a test can match it exactly
            fingerprint = scale * (b.to(torch.bfloat16).float() @ a.to(torch.bfloat16).float())
            folded, size = folded + 1, size + fingerprint.abs().sum().item()
        if not folded:
            raise RuntimeError(f"{NAME}: an adapter update without lora_A weights: {sorted(adapter)[:5]} ...")
        self.adapter_updates += 1
        # size: the summed |alpha/r * B @ A| over the modules, which a test recomputes from a saved adapter
        logger.warning("%s: LoRA adapter folded into %d modules (scale %.3g, update %d, size %.6e)", NAME, folded,
                       scale, self.adapter_updates, size)

    async def set_global_steps(self, global_steps):
        self.global_steps = global_steps

    async def _noop(self, *args, **kwargs):
        return {}

    wake_up = sleep = clear_kv_cache = release_kv_cache = resume_kv_cache = _noop
    abort_all_requests = resume_generation = start_profile = stop_profile = wait_for_requests_to_drain = _noop


class SampleEachRow:
    """The last logits processor of a batched generate: temperature, top-k and top-p as transformers applies them when
    sampling, then one draw per row from that row's own generator; the drawn token is left the only one possible, so
    transformers' greedy choice takes it."""

    def __init__(self, seeds: list[int], temperature: float, top_k: int, top_p: float):
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.warpers = [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
        self.warpers += [TopKLogitsWarper(top_k)] if top_k > 0 else []
        self.warpers += [TopPLogitsWarper(top_p)] if top_p < 1.0 else []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        probs = torch.softmax(scores, dim=-1)
        drawn = torch.cat([torch.multinomial(probs[row: row + 1], 1, generator=generator)
                           for row, generator in enumerate(self.generators)])
        return torch.full_like(scores, -float("inf")).scatter_(1, drawn, 0.0)


class HFReplica(RolloutReplica):
    async def launch_servers(self):
        server_cls = ray.remote(HFServer)
        server = server_cls.options(name=_server_name(self.replica_rank), num_cpus=0,
                                    max_concurrency=self.max_concurrency).remote(
            config=self.config, model_config=self.model_config, replica_rank=self.replica_rank)
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"{NAME}-replica-{self.replica_rank}"


class ServerAdapter(BaseRollout):
    """In each hybrid training worker: forwards the trainer's weights to this replica's HFServer."""

    def __init__(self, config, model_config, device_mesh, replica_rank: int = -1):
        super().__init__(config, model_config, device_mesh)
        world = self.config.tensor_model_parallel_size * self.config.data_parallel_size * self.config.pipeline_model_parallel_size
        rank = int(os.environ["RANK"])
        self.replica_rank = rank // world if replica_rank == -1 else replica_rank
        self.has_server = rank % world == 0
        self.server = None

    def _server(self):
        if self.server is None:
            self.server = ray.get_actor(_server_name(self.replica_rank))
        return self.server

    async def resume(self, tags: list[str]):
        return None

    async def release(self):
        return None

    async def update_weights(self, weights, global_steps: int = None, wire_format: str = "named_tensors", **kwargs):
        from verl.workers.rollout.utils import ensure_async_iterator

        assert wire_format == "named_tensors", f"{NAME} takes full tensors only, got {wire_format!r}"
        state_dict = {}
        async for name, tensor in ensure_async_iterator(weights):  # every rank must drain its generator
            state_dict[name] = tensor.detach().to("cpu", torch.float32).clone()
        if self.has_server:
            await self._server().update_weights.remote(state_dict, kwargs.get("peft_config"))
            if global_steps is not None:
                await self._server().set_global_steps.remote(global_steps)


_ROLLOUT_REGISTRY[(NAME, "async")] = f"{__name__}.ServerAdapter"
RolloutReplicaRegistry.register(NAME, lambda: HFReplica)
