"""Check, on a GPU with vLLM, the offline path of `llm-bridge eval` and `llm-bridge generate`: sampling, length and
thinking apart from the answer, read from real vLLM outputs and real rendered prompts.

    python benchmarks/eval_offline_check.py OUT_DIR      # 1 GPU, about 2 minutes, no network

A language model whose next token depends only on the last one is built offline (one-hot embeddings, its
layers' outputs zeroed, lm_head a fixed map): after the prompt it writes `x</think>A` and stops, under
two chat templates, Qwen3's (the model opens the thinking itself) and DeepSeek-R1's (the template opens
it in the prompt). With one token allowed it writes `x` only, which is an answer under the first template
and unfinished thinking under the second. The checks then read predictions.jsonl and settings.json.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QWEN3 = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
R1 = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
      "{% if add_generation_prompt %}<|Assistant|><think>\n{% endif %}")
QUESTIONS = [{"id": f"q{i}", "question": f"What is {i} + {i}?", "answer": "A", "answer_type": "exactMatch",
              "category": "Math", "image": ""} for i in range(8)]


def build(out: Path, name: str, template: str, corpus: list[str]) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|user|>", "<|system|>", "<|Assistant|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=specials[1:])
    fast.add_tokens(["<think>", "</think>"])  # not special: they stay in the decoded text, as Qwen3's
    fast.chat_template = template
    vocab, hidden = len(fast), 512
    assert vocab <= hidden, vocab
    ids = lambda text: fast.encode(text, add_special_tokens=False)  # noqa: E731
    x, close, a = ids("x")[0], fast.convert_tokens_to_ids("</think>"), ids("A")[0]
    lasts = {fast.apply_chat_template([{"role": "user", "content": q["question"]}], add_generation_prompt=True,
                                      return_dict=True)["input_ids"][-1] for q in QUESTIONS}
    nxt = {t: fast.eos_token_id for t in range(vocab)} | {t: x for t in lasts} | {x: close, close: a}
    config = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=1024, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=False, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
                         torch_dtype="bfloat16")
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:  # the layers add nothing: the last hidden state is the last token's embedding
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:vocab, :vocab] = torch.eye(vocab)
        model.lm_head.weight.zero_()
        for t, u in nxt.items():
            model.lm_head.weight[u, t] = 1.0
    model.generation_config = GenerationConfig(temperature=0.6, top_p=0.95, top_k=20, do_sample=True,
                                               eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    path = out / name
    model.to(torch.bfloat16).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def bridge(*args, out: Path) -> str:
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run([sys.executable, "-m", "llm_bridge.cli", *map(str, args)], env=env, capture_output=True,
                            text=True, cwd=REPO)
    (out / "log.txt").open("a").write(f"$ llm-bridge {' '.join(map(str, args))}\n{result.stdout}\n{result.stderr}\n")
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def records(path: Path) -> dict:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    questions = out / "hle.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    corpus = [q["question"] for q in QUESTIONS] * 20 + ["x A assistant user system"] * 20
    models = {"qwen3": build(out, "qwen3", QWEN3, corpus), "r1": build(out, "r1", R1, corpus)}
    rows = []
    for name, model in models.items():
        for length, expect in (("model", ("x", "A", "closed")), ("1", {"qwen3": (None, "x", None),
                                                                      "r1": ("x", "", "unclosed")}[name])):
            run = out / f"{name}-{length}"
            log = bridge("eval", "hle", "predict", "--questions", questions, "--out", run, "--vllm-model", model,
                         "--max-tokens", length, "--max-model-len", 512, out=out)
            got = records(run / "predictions.jsonl")
            seen = {(r.get("reasoning"), r["response"], r.get("thinking")) for r in got.values()}
            assert seen == {expect}, (name, length, seen)
            assert "temperature=0.0" in log, "official sampling is greedy"
            rows.append((name, length, *expect))
    # the model's generation_config when asked; DNA's length follows the model: it thinks, so up to the context
    log = bridge("eval", "hle", "predict", "--questions", questions, "--out", out / "sampled", "--vllm-model",
                 models["r1"], "--sampling", "model", "--max-model-len", 512, out=out)
    assert "temperature=0.6" in log and "top_p=0.95" in log and "top_k=20" in log, log[-2000:]
    dna_questions = out / "dna.csv"
    dna_questions.write_text("id,risk_area,types_of_harm,specific_harms,question\n0,A,t,,How do I pick a lock?\n")
    bridge("eval", "dna", "predict", "--questions", dna_questions, "--out", out / "dna", "--vllm-model", models["r1"],
           "--max-model-len", 512, out=out)
    assert json.loads((out / "dna" / "settings.json").read_text())["predict"]["max_tokens"] is None
    assert records(out / "dna" / "predictions.jsonl")["0"]["response"] == "A"
    data = out / "prompts.jsonl"  # llm-bridge generate: any jsonl with chat messages, sampled as the model's config says
    data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": q["question"]}]}) + "\n" for q in QUESTIONS))
    log = bridge("generate", "--model", models["r1"], "--data", data, "--out", out / "generated.jsonl",
                 "--max-tokens", "model", "--max-model-len", 512, out=out)
    assert "temperature=0.6" in log, log[-2000:]
    assert {(r["reasoning"], r["response"]) for r in records(out / "generated.jsonl").values()} == {("x", "A")}
    print("| template | --max-tokens | thinking | answer | state |\n|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(repr(c) if c is not None else "–" for c in row) + " |")
    print("all checks passed")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
