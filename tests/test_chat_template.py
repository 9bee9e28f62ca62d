"""sft.chat_template: qwen3_sft. Qwen3's own chat template writes an assistant turn's <think> only after the
conversation's last user message; verl 0.9.1's SFT dataset renders every message on its own and compares the
result with the whole conversation, so with Qwen3's template it stops on the first sample (and, told to ignore
that, trains without the thinking). The recipe's template writes every assistant turn as given.

QWEN3_LIKE below reproduces that behaviour of Qwen3's template (the last-query rule, the <think> split and the
empty think block), written for these tests; real verl code runs on it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from conftest import REPO
from llm_bridge.job import verl_sft
from llm_bridge.login.loader import load
from llm_bridge.login.rules import check
from test_verl_config import compose_verl

sys.path.insert(0, str(REPO / "tests" / "cpu"))
import pipeline  # noqa: E402
from build_tiny import build_tokenizer  # noqa: E402

QWEN3_LIKE = """{%- set ns = namespace(last_query_index=messages|length - 1, found=false) %}
{%- for message in messages[::-1] %}{%- if message.role == "user" and not ns.found %}
{%- set ns.last_query_index = messages|length - 1 - loop.index0 %}{%- set ns.found = true %}{%- endif %}{%- endfor %}
{%- for message in messages %}
{%- if message.role in ["system", "user"] %}{{- "<|im_start|>" + message.role + "\\n" + message.content + "<|im_end|>\\n" }}
{%- elif message.role == "assistant" %}{%- set content = message.content %}{%- set reasoning = "" %}
{%- if "</think>" in content %}{%- set reasoning = content.split("</think>")[0].split("<think>")[-1].strip("\\n") %}
{%- set content = content.split("</think>")[-1].lstrip("\\n") %}{%- endif %}
{%- if loop.index0 > ns.last_query_index %}{{- "<|im_start|>assistant\\n<think>\\n" + reasoning + "\\n</think>\\n\\n" + content }}
{%- else %}{{- "<|im_start|>assistant\\n" + content }}{%- endif %}{{- "<|im_end|>\\n" }}{%- endif %}{%- endfor %}
{%- if add_generation_prompt %}{{- "<|im_start|>assistant\\n" }}{%- endif %}"""
THINKING = [{"role": "user", "content": "Tom has 3 apples and gets 2 more. How many?"},
            {"role": "assistant", "content": "<think>\nTom has 3, then 2 more: 3 + 2 = 5.\n</think>\n\nThe answer is 5."}]


def trained_text(template: str, tmp_path: Path) -> str:
    """What verl's own SFT dataset puts under the loss for THINKING with this chat template."""
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    tokenizer = build_tokenizer([m["content"] for m in THINKING] * 40, vocab_size=400)
    tokenizer.chat_template = template
    pd.DataFrame([{"messages": THINKING}]).to_parquet(tmp_path / "think.parquet")
    config = OmegaConf.create({"messages_key": "messages", "max_length": 512, "truncation": "error",
                               "pad_mode": "no_padding", "enable_thinking_default": None})
    item = MultiTurnSFTDataset(str(tmp_path / "think.parquet"), tokenizer, config)[0]
    return tokenizer.decode(item["input_ids"][item["loss_mask"].bool()])


def test_verl_trains_the_thinking_only_with_the_recipes_template(tmp_path):
    with pytest.raises(AssertionError, match="apply_chat_template to each turn separately"):
        trained_text(QWEN3_LIKE, tmp_path)
    recipe = (verl_sft.CHAT_TEMPLATES / "qwen3_sft.jinja").read_text()
    assert trained_text(recipe, tmp_path) == THINKING[1]["content"] + "<|im_end|>\n"


def test_the_recipes_template_prompts_as_qwen3_does(tmp_path):
    """Generation prompts (vLLM, evaluation) are Qwen3's: an empty think block only with enable_thinking=false."""
    tokenizer = build_tokenizer(["a b c"] * 20, vocab_size=300)
    tokenizer.chat_template = (verl_sft.CHAT_TEMPLATES / "qwen3_sft.jinja").read_text()
    prompt = [THINKING[0]]
    assert tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True).endswith(
        "<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True, enable_thinking=False).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    reasoning = [THINKING[0], {"role": "assistant", "reasoning_content": "3 + 2 = 5.", "content": "5"}]
    assert tokenizer.apply_chat_template(reasoning, tokenize=False).endswith(
        "<|im_start|>assistant\n<think>\n3 + 2 = 5.\n</think>\n\n5<|im_end|>\n")


@pytest.mark.parametrize("name", sorted(p.stem for p in verl_sft.CHAT_TEMPLATES.glob("*.jinja")))
def test_each_template_reaches_verl_unchanged(name):
    cfg = compose_verl("sft_trainer_engine", [verl_sft.chat_template_override(name)])
    assert cfg.model.custom_chat_template == (verl_sft.CHAT_TEMPLATES / f"{name}.jinja").read_text()


def test_check_refuses_qwen3s_own_template_for_sft(example, write_team, tmp_path):
    model = tmp_path / "qwen3"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    (model / "tokenizer_config.json").write_text(json.dumps({"chat_template": QWEN3_LIKE}))
    example["sft"]["model"] = str(model)
    config, _ = load(write_team(example))
    [problem] = [p for p in check(config) if p.field == "sft.chat_template"]
    assert problem.severity == "error" and "qwen3_sft" in problem.fix
    example["sft"]["chat_template"] = "qwen3_sft"
    config, _ = load(write_team(example))
    assert not [p for p in check(config) if p.field == "sft.chat_template"]
    example["sft"].update(model="Qwen/Qwen3-32B", chat_template="model")  # not downloaded: a warning
    config, _ = load(write_team(example))
    [problem] = [p for p in check(config) if p.field == "sft.chat_template"]
    assert problem.severity == "warning"


@pytest.fixture(scope="module")
def qwen3_run(tmp_path_factory) -> Path:
    """The tiny model given QWEN3_LIKE as its chat template, and SFT through the rendered script."""
    work = tmp_path_factory.mktemp("chat")
    stage = pipeline.Stage(work)
    pipeline.prepare(work, stage)
    config = json.loads((work / "tiny" / "model" / "tokenizer_config.json").read_text())
    (work / "tiny" / "model" / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": QWEN3_LIKE}))
    (work / "tiny" / "model" / "chat_template.jinja").unlink(missing_ok=True)
    return work


@pytest.mark.parametrize("template", ["model", "qwen3_sft"])
def test_sft_through_the_rendered_script(qwen3_run, template):
    team = pipeline.team_config(qwen3_run)
    team["sft"].update(experiment_name=f"sft-{template}", chat_template=template)
    path = qwen3_run / f"team-{template}.yaml"
    path.write_text(yaml.safe_dump(team, sort_keys=False))
    out = qwen3_run / f"rendered-{template}"
    subprocess.run([sys.executable, "-m", "llm_bridge.cli", "render", "--team", str(path), "--out", str(out)], check=True,
                   cwd=REPO, capture_output=True)
    log = qwen3_run / "logs" / f"sft-{template}.log"
    with log.open("w") as handle:
        result = subprocess.run(["bash", str(out / "sft" / "run_sft.sbatch"), *pipeline.SFT_CPU_OVERRIDES,
                                 "trainer.total_training_steps=1"], cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                                env={**os.environ, **pipeline.CPU_ENV}, timeout=600)
    text = log.read_text(errors="ignore")
    if template == "model":  # Qwen3's behaviour: verl stops on the first sample
        assert result.returncode != 0 and "apply_chat_template to each turn separately" in text
        return
    assert result.returncode == 0, text[-3000:]
    saved = qwen3_run / "checkpoints" / "sft" / "sft-qwen3_sft" / "global_step_1" / "huggingface"
    written = (saved / "chat_template.jinja").read_text() if (saved / "chat_template.jinja").is_file() else \
        json.loads((saved / "tokenizer_config.json").read_text())["chat_template"]
    assert written == (verl_sft.CHAT_TEMPLATES / "qwen3_sft.jinja").read_text(), "the merged model prompts as it trained"
