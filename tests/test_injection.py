"""No value from team.yaml and no file name on the command line ever runs as code in a rendered script.

Payloads ($(...), backticks, ;, |, &&, line breaks, quotes) are planted in every string field of the schema and
in --out/--team. A planted value must either be refused by `llm-bridge check` naming its field (and `llm-bridge render`
then writes nothing), or render into scripts that run to their last line under stubs (tests/script_stubs.py)
without the payload's `touch` ever happening. The rule's backstop (llm_bridge/login/shell.py) is tested on its own by
planting payloads past the schema, and the harness is shown to catch a payload when that backstop is off.
"""

import json
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from llm_bridge.login import render
from llm_bridge.cli import main as bridge_main
from llm_bridge.login.config import TeamConfig
from llm_bridge.login.loader import load
from llm_bridge.problems import errors
from llm_bridge.login.render import RenderError, render_all, write_all
from llm_bridge.login.rules import check
from llm_bridge.login.shell import Checked

from conftest import EXAMPLE, REPO, bridge
from script_stubs import Stubs, stub_config

PAYLOADS = ["$(touch {x})", "$(touch${{IFS}}{x})", "`touch {x}`", "`touch${{IFS}}{x}`", ";touch {x};", "\ntouch {x}\n",
            '";touch {x};"', "';touch {x};'", "|touch${{IFS}}{x}", "&&touch${{IFS}}{x}"]


def _is_text(annotation) -> bool:
    if annotation is str:
        return True
    if typing.get_origin(annotation) is typing.Literal:
        return all(isinstance(a, str) for a in typing.get_args(annotation))
    return any(_is_text(a) for a in typing.get_args(annotation))


def _section(annotation) -> type[BaseModel] | None:
    """The model of a section field, optional or not (sft.lora: LoRA | None)."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def string_fields(model: type[BaseModel] = TeamConfig, prefix: str = "") -> list[str]:
    """Dotted names of every field of the schema that holds text (str, Literal, list[str], optional or not),
    nested sections (sft.lora.*) included."""
    found = []
    for name, field in model.model_fields.items():
        section = _section(field.annotation)
        if section is not None:
            found += string_fields(section, f"{prefix}{name}.")
        elif _is_text(field.annotation):
            found.append(prefix + name)
    return found


FIELDS = string_fields()


def test_the_schema_walk_finds_every_kind_of_text_field():
    for field in ("slurm.nodelist", "environment.modules", "evaluation.judge_url", "sft.model", "rl.algorithm",
                  "paths.logs", "network.ib_hca", "wandb.entity", "sft.lora.target_modules", "rl.lora.exclude_modules"):
        assert field in FIELDS
    assert len(FIELDS) > 40


def _annotation(field: str):
    model: type[BaseModel] = TeamConfig
    *sections, name = field.split(".")
    for section in sections:
        model = _section(model.model_fields[section].annotation)
    return model.model_fields[name].annotation


def _is_list(field: str) -> bool:
    annotation = _annotation(field)
    return typing.get_origin(annotation) is list or (
        typing.get_origin(annotation) is not typing.Literal and list[str] in typing.get_args(annotation)
        and str not in typing.get_args(annotation))


LORA = {"rank": 8, "alpha": 16}  # a valid section to plant into: the payload is then its only problem


def plant(team: dict, field: str, text: str) -> None:
    *sections, name = field.split(".")
    node = team
    for section in sections:
        node = node.setdefault(section, dict(LORA) if section == "lora" else {})
    base = node.get(name)
    base = (base[0] if base else "x") if isinstance(base, list) else (base if isinstance(base, str) else "x")
    node[name] = [base + text] if _is_list(field) else base + text


@pytest.fixture(scope="module")
def stubbed(tmp_path_factory):
    root = tmp_path_factory.mktemp("injection")
    team = stub_config(yaml.safe_load(EXAMPLE.read_text()), root)
    return root, team, Stubs(root, team["slurm"]["gpus_per_node"])


def run_rendered(stubs: Stubs, out: Path, cwd: Path) -> None:
    results = stubs.run_all(out, stubs.root / "logs", cwd, REPO)
    assert len(results) == 13
    failed = {name: r.stderr[-600:] for name, r in results.items() if r.returncode != 0}
    assert not failed, failed  # every script ran to its end, so every value in it was expanded


def test_the_stubbed_scripts_run_to_the_end(stubbed):
    root, team, stubs = stubbed
    out = root / "plain"
    (root / "plain.yaml").write_text(yaml.safe_dump(team))
    assert bridge("render", "--team", str(root / "plain.yaml"), "--out", str(out)).returncode == 0
    run_rendered(stubs, out, root)
    launched = {call[0] for call in stubs.calls()}
    assert {"torchrun", "python3", "ray", "llm-bridge", "srun", "module"} <= launched


@pytest.mark.parametrize("field", FIELDS)
def test_a_payload_in_any_field_is_refused_or_stays_text(stubbed, field, capsys):
    root, team, stubs = stubbed
    pwned = root / f"pwned-{field}"
    for n, payload in enumerate(PAYLOADS):
        planted = json.loads(json.dumps(team))
        plant(planted, field, payload.format(x=pwned))
        path = root / f"{field}-{n}.yaml"
        path.write_text(yaml.safe_dump(planted))
        config, problems = load(path)
        if config is not None:
            problems += check(config)
        out = root / f"out-{field}-{n}"
        code = bridge_main(["render", "--team", str(path), "--out", str(out)])
        printed = capsys.readouterr()
        if errors(problems):
            assert any(p.field == field or p.field.startswith(field + ".") for p in errors(problems)), (payload, problems)
            assert code == 1 and not out.exists(), printed
        else:  # accepted: then it must stay text when the scripts run
            assert code == 0, printed
            run_rendered(stubs, out, root)
        assert not pwned.exists(), f"{field} = {payload!r} ran"


def _bypass(config: TeamConfig, field: str, value: str) -> TeamConfig:
    """config with value planted in field past the schema's validation (an absent section is made for it)."""
    value = [value] if _is_list(field) else value

    def update(node: BaseModel, path: list[str]) -> BaseModel:
        head, *rest = path
        if not rest:
            return node.model_copy(update={head: value})
        child = getattr(node, head)
        if child is None:
            child = _section(type(node).model_fields[head].annotation).model_construct(**LORA)
        return node.model_copy(update={head: update(child, rest)})

    return update(config, field.split("."))


@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_renderer_refuses_what_the_schema_would_let_through(stubbed, payload):
    """The backstop: every {{ value }} is checked again at render time, naming the field."""
    root, team, _ = stubbed
    (root / "valid.yaml").write_text(yaml.safe_dump(team))
    config, problems = load(root / "valid.yaml")
    assert config is not None, problems
    planted_text = payload.format(x=root / "pwned")
    refused = 0
    for field in FIELDS:
        try:
            scripts = render_all(_bypass(config, field, planted_text), root / "valid.yaml", "out")
        except RenderError as exc:
            assert field in str(exc) and "Fix:" in str(exc)
            refused += 1
        else:  # a field no template prints (a PPO-only value in a GRPO config, ...)
            assert not any(planted_text in text for text in scripts.values()), field
    assert refused > 30


def test_with_the_backstop_off_the_harness_sees_a_payload_run(stubbed, monkeypatch):
    """Proof that the stubbed run would catch a hole: the same payloads run once the rule is switched off."""
    root, team, stubs = stubbed
    (root / "valid.yaml").write_text(yaml.safe_dump(team))
    config, _ = load(root / "valid.yaml")
    monkeypatch.setattr(render, "script_value", lambda v: Checked(v) if isinstance(v, str) else v)
    for field, payload in (("evaluation.judge_url", "http://judge$(touch${{IFS}}{x})"),
                           ("slurm.nodelist", "node1\ntouch {x}"), ("sft.model", '/m"$(touch${{IFS}}{x})"')):
        pwned = root / f"ran-{field}"
        out = root / f"unguarded-{field}"
        write_all(render_all(_bypass(config, field, payload.format(x=pwned)), root / "valid.yaml", "out"), out)
        stubs.run_all(out, stubs.root / "logs", root, REPO)
        assert pwned.exists(), field


def test_file_names_on_the_command_line_stay_text(stubbed):
    root, team, stubs = stubbed
    names = root / "names"
    names.mkdir()
    team_file = names / "team $(touch pwned);'x'`touch pwned`.yaml"
    team_file.write_text(yaml.safe_dump(team))
    out = names / 'out $(touch pwned) ";touch pwned;"'
    result = bridge("render", "--team", str(team_file), "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--out" not in result.stderr
    run_rendered(stubs, out, names)
    assert not (names / "pwned").exists()
    header = (out / "sft" / "run_sft.sbatch").read_text()
    assert "sbatch '" in header  # the usage line quotes the name, so copying it works


@pytest.mark.parametrize("flag", ["--out", "--team"])
def test_a_line_break_in_a_file_name_is_refused(stubbed, flag):
    root, team, _ = stubbed
    names = root / f"break{flag}"
    names.mkdir()
    plain = names / "team.yaml"
    plain.write_text(yaml.safe_dump(team))
    broken = names / "a\ntouch pwned"
    if flag == "--team":
        broken.write_text(yaml.safe_dump(team))
    args = {"--team": str(broken if flag == "--team" else plain), "--out": str(broken if flag == "--out" else names / "o")}
    result = bridge("render", "--team", args["--team"], "--out", args["--out"])
    assert result.returncode == 1
    assert f"{flag} " in result.stderr and "control character" in result.stderr and "Fix:" in result.stderr
    assert not (names / "o").exists() and not (broken.is_dir())
