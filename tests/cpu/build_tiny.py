"""Build, offline, what the CPU pipeline trains: GSM8K-format sample data, a byte-level BPE tokenizer
trained on it with a Qwen2.5-style chat template, and a random Qwen2 model of ~140k parameters.

    python tests/cpu/build_tiny.py OUT_DIR      # writes OUT_DIR/{sample_gsm8k,model}
"""

import json
import random
import sys
from pathlib import Path

CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{ '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_WORDS = ["You are a helpful assistant.", "system user assistant"]  # what the chat template adds to every text
TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  tie_word_embeddings=True)
NAMES = ["Tom", "Aiko", "Ken", "Mia", "Sora", "Lena", "Yuto", "Emma"]
ITEMS = ["apples", "books", "pencils", "stickers", "coins", "cards"]


def sample_problem(rng: random.Random) -> dict:
    """A GSM8K-shaped word problem: question, worked answer with <<calc>> and a final '#### n' line."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b, c = rng.randint(2, 40), rng.randint(2, 40), rng.randint(2, 5)
    total = (a + b) * c
    question = (f"{name} has {a} {item} and gets {b} more. Then {name} has {c} times as many bags of them. "
                f"How many {item} does {name} have?")
    answer = (f"{name} first has {a}+{b}=<<{a}+{b}={a + b}>>{a + b} {item}.\n"
              f"With {c} bags that is {a + b}*{c}=<<{a + b}*{c}={total}>>{total} {item}.\n#### {total:,}")
    return {"question": question, "answer": answer}


def write_sample_data(out: Path, n_train: int = 64, n_test: int = 16) -> Path:
    """The original GSM8K release's layout: train.jsonl / test.jsonl with question and answer."""
    rng = random.Random(0)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        rows = [sample_problem(rng) for _ in range(n)]
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def build_tokenizer(corpus: list[str], vocab_size: int = 1024, split_digits: bool = False):
    """A byte-level BPE trained on `corpus`. split_digits: one token per digit, as Qwen's tokenizers do (a model
    that is to learn arithmetic needs it: with whole numbers as tokens it has to learn every sum by heart)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split_digits:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), tok.pre_tokenizer])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer, out: Path) -> Path:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        **TINY_SHAPE, vocab_size=len(tokenizer), max_position_embeddings=1024,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_qwen3(source: Path, out: Path, moe: bool = False) -> Path:
    """A tiny Qwen3 (dense) or Qwen3-MoE model with the tokenizer of `source` (a model build_model wrote): the
    architectures the teams fine-tune, at a size a CPU trains in seconds."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(source)
    shape = dict(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=1024, tie_word_embeddings=False,
                 bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if moe:
        model = Qwen3MoeForCausalLM(Qwen3MoeConfig(**shape, intermediate_size=128, moe_intermediate_size=32,
                                                   num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1))
    else:
        model = Qwen3ForCausalLM(Qwen3Config(**shape, intermediate_size=128))
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(out: Path) -> None:
    data = write_sample_data(out / "sample_gsm8k")
    corpus = [line for split in ("train", "test") for row in map(json.loads, (data / f"{split}.jsonl").read_text().splitlines())
              for line in (row["question"], row["answer"])]
    corpus += [*CHAT_WORDS, "Let's think step by step and output the final answer after \"####\"."]
    build_model(build_tokenizer(corpus), out / "model")
    print(f"tiny model and sample data in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
