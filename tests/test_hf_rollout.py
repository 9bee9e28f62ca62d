"""The CPU test rollout every GRPO test samples from (tests/cpu/verl_cpu_hf_rollout.py, rollout name hf_cpu).

Requests that arrive while the replica is busy are generated together, one batched transformers.generate per prompt
length, and each still gets what it would get alone: the same tokens (its own generator, seeded by the rollout
seed, the prompt and the draw) and the same log-probs (a forward pass of its row alone). test_grpo_learns compares
runs that must draw the same samples however the agent loop's requests happened to be batched."""

import asyncio
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).parent / "cpu"))
import build_tiny  # noqa: E402
from verl_cpu_hf_rollout import HFServer  # noqa: E402


def test_requests_answered_together_get_what_each_would_get_alone(tmp_path):
    tokenizer = build_tiny.build_tokenizer(["Mei has 17 shells.", "How many shells does Mei have now?", "#### 17",
                                            *build_tiny.CHAT_WORDS], vocab_size=300)
    model = build_tiny.build_model(tokenizer, tmp_path / "model")
    question = tokenizer.encode("How many shells does Mei have now?")
    prompts = [question, question[::-1], question + question[:3]]  # two prompts of one length, one of another
    sampling = dict(temperature=1.5, top_p=1.0, top_k=-1, logprobs=True)

    def server(seed: int) -> tuple[HFServer, list]:
        config = SimpleNamespace(prompt_length=16, response_length=12, seed=seed, ignore_eos=False)
        made, calls = HFServer(config, SimpleNamespace(local_path=str(model)), replica_rank=0), []
        generate = made.model.generate
        made.model.generate = lambda inputs, **kwargs: calls.append(len(inputs)) or generate(inputs, **kwargs)
        return made, calls

    async def together(seed: int):
        made, calls = server(seed)
        return await asyncio.gather(*[made.generate("r", p, sampling) for p in prompts for _ in range(4)]), calls

    async def alone(seed: int):
        made, calls = server(seed)
        return [await made.generate("r", p, sampling) for p in prompts for _ in range(4)], calls

    (batched, batched_calls), (single, single_calls) = asyncio.run(together(3)), asyncio.run(alone(3))
    # the first request starts alone; the 11 queued behind it go as one batch of each prompt length
    assert single_calls == [1] * 12 and batched_calls == [1, 7, 4], batched_calls
    assert [o.token_ids for o in batched] == [o.token_ids for o in single]
    assert [o.log_probs for o in batched] == [o.log_probs for o in single]
    assert all(len(o.log_probs) == len(o.token_ids) > 0 for o in batched)
    # each draw of a prompt is its own sample, and another rollout seed draws others
    assert len({tuple(o.token_ids) for o in batched[:4]}) > 1
    other, _ = asyncio.run(together(4))
    assert [o.token_ids for o in other] != [o.token_ids for o in batched]
