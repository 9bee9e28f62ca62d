"""Read team.yaml and turn every problem in it into a `Problem` — all of them at once."""

import copy
import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from llm_bridge import secrets
from llm_bridge.login.config import TeamConfig
from llm_bridge.problems import Problem, errors

EXAMPLE = Path(__file__).resolve().parents[2] / "templates" / "team.example.yaml"

# Keys that were settings once and changed nothing: a warning, then ignored, so that an older team.yaml still loads.
REMOVED = {
    ("paths", "data"): "no script read it; data paths are sft.train_files, sft.val_files, rl.train_files, rl.val_files",
}

_PLACEHOLDERS = [
    (re.compile(r"YOU_TEAM|YOUR_[A-Z_]+|CHANGE_?ME"), "a placeholder from the seed recipe"),
    (re.compile(r"/path/to/"), "a '/path/to/' placeholder"),
    (re.compile(r"<[^<>]+>"), "a '<...>' placeholder"),
]

_SECRET_KEY = re.compile(r"(^|_)(token|api_?key|secret|password)s?$", re.IGNORECASE)


class _Loader(yaml.SafeLoader):
    """yaml.safe_load, but what it would settle silently becomes a problem: a key written twice in one mapping
    (YAML keeps the last), and an integer too long for Python to read (a ValueError outside YAML's errors)."""

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicates: list[tuple[str, int, int]] = []  # (key, first line, repeated line)

    def construct_mapping(self, node, deep=False):
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                line = key_node.start_mark.line + 1
                if key_node.value in seen:
                    self.duplicates.append((key_node.value, seen[key_node.value], line))
                else:
                    seen[key_node.value] = line
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node):
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            raise yaml.constructor.ConstructorError(
                None, None, f"a number with {len(node.value)} digits is not a setting", node.start_mark) from None


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def _parse(text: str) -> tuple[Any, list[Problem]]:
    try:
        loader = _Loader(text)  # the reader refuses control characters here already
        data = loader.get_single_data()
        loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(yaml)"
        return None, [Problem(where, f"not valid YAML: {getattr(exc, 'problem', None) or exc}", "check indentation and quoting")]
    return data, [Problem(f"line {line}", f"'{key}' is set twice in one section (first on line {first}); YAML would "
                          "silently keep only the last", "delete one of the two")
                  for key, first, line in loader.duplicates]


def walk(node: Any, path: tuple = ()):
    """Yield (path, value) for every leaf of a YAML tree; path is the tuple of keys and list indices."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, path + (str(key),))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, path + (str(index),))
    else:
        yield path, node


def dotted(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _scan_secrets(text: str, data: Any) -> list[Problem]:
    problems, reported = [], set()
    for path, value in walk(data):
        if path and _SECRET_KEY.search(path[-1]):
            problems.append(Problem(dotted(path), "secrets never go in team.yaml (it is copied, shared and committed)",
                                    "delete this key; scripts read tokens from your login or environment"))
            reported.add(str(value))
            continue
        found = secrets.find(value, dotted(path)) if isinstance(value, str) else None
        if found:
            problems.append(Problem(dotted(path), f"looks like {found[0]} (value not shown)", f"delete it and {found[1]}"))
            reported.add(value)
    for number, line in enumerate(text.splitlines(), start=1):
        found = secrets.find(line)
        if found and not any(len(value) >= 20 and value in line for value in reported):
            problems.append(Problem(f"line {number}", f"looks like {found[0]} (value not shown)", f"delete it and {found[1]}"))
    return problems


def _scan_placeholders(data: Any) -> list[Problem]:
    problems = []
    for path, value in walk(data):
        if not isinstance(value, str):
            continue
        for pattern, what in _PLACEHOLDERS:
            if pattern.search(value):
                problems.append(Problem(dotted(path), f"{value!r} is {what}",
                                        "replace it with your team's real value (see templates/team.example.yaml)"))
                break
    return problems


def _removed_keys(data: dict) -> list[Problem]:
    problems = []
    for (section, key), why in REMOVED.items():
        if isinstance(data.get(section), dict) and key in data[section]:
            del data[section][key]
            problems.append(Problem(f"{section}.{key}", f"is no longer a setting and is ignored: {why}",
                                    "delete this line", "warning"))
    return problems


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] | None = TeamConfig
    for part in loc:
        field = model.model_fields.get(str(part)) if model else None
        annotation = field.annotation if field else None
        options = typing.get_args(annotation) or (annotation,)  # an optional section: LoRA | None
        model = next((o for o in options if isinstance(o, type) and issubclass(o, BaseModel)), None)
    return model


def _from_validation_error(exc: ValidationError, skip: set[str]) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        field = dotted(loc)
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
        elif kind == "string_pattern_mismatch":
            problems.append(Problem(field, f"{err.get('input')!r} has characters this field does not take",
                                    f"write it with only what {err['ctx']['pattern']} allows "
                                    "(no spaces, quotes, line breaks or other symbols)"))
        elif kind == "literal_error":
            problems.append(Problem(field, f"{err.get('input')!r} is not one of the choices",
                                    f"write one of {err['ctx']['expected']}"))
        else:
            got = err.get("input")
            shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
            problems.append(Problem(field, err["msg"] + shown))
    return problems


@dataclass
class Loaded:
    """What `load_for_rules` found. `config` is the team's config, None while any problem is an error. `stand_in` is
    the same config with each value the schema refused set aside (unknown keys dropped, a bad or missing value replaced
    by the example's), so that the cross-field rules can still run; `set_aside` names those fields."""

    config: TeamConfig | None
    problems: list[Problem]
    stand_in: TeamConfig | None = None
    set_aside: set[str] = field(default_factory=set)


def load(path: Path) -> tuple[TeamConfig | None, list[Problem]]:
    """Parse and validate a team config. Returns the config (None if invalid) and every problem found, with any
    token shape in them hidden: a key, an alias, a tag or a bad value may be one."""
    loaded = load_for_rules(path)
    return loaded.config, loaded.problems


def load_for_rules(path: Path) -> Loaded:
    loaded = _load(path)
    loaded.problems = [Problem(secrets.hide(p.field), secrets.hide(p.message), secrets.hide(p.fix), p.severity)
                       for p in loaded.problems]
    return loaded


def example_values() -> dict:
    """The shipped example's values: stand-ins for refused values, and the values that are another team's."""
    return yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))


def _at(tree: Any, loc: tuple) -> tuple[bool, Any]:
    for part in loc:
        if isinstance(tree, dict) and part in tree:
            tree = tree[part]
        elif isinstance(tree, list) and part.isdigit() and int(part) < len(tree):
            tree = tree[int(part)]
        else:
            return False, None
    return True, tree


def _stand_in(data: dict) -> tuple[TeamConfig | None, set[str]]:
    """Set aside what the schema refuses, a few rounds at most (fixing one error can uncover the next)."""
    data, example, set_aside = copy.deepcopy(data), example_values(), set()
    for _ in range(5):
        try:
            return TeamConfig.model_validate(data), set_aside
        except ValidationError as exc:
            for err in exc.errors():
                loc = tuple(str(p) for p in err["loc"])
                if not loc:
                    return None, set_aside
                if err["type"] != "extra_forbidden":
                    set_aside.add(dotted(loc))
                found, parent = _at(data, loc[:-1])
                if not found or not isinstance(parent, (dict, list)):
                    continue
                known, value = _at(example, loc)
                if isinstance(parent, dict):
                    if known and err["type"] != "extra_forbidden":
                        parent[loc[-1]] = copy.deepcopy(value)
                    elif err["type"] == "missing" and len(loc) > 1:  # an optional section the example leaves out
                        _, grandparent = _at(data, loc[:-2])
                        if isinstance(grandparent, dict):
                            grandparent.pop(loc[-2], None)
                            set_aside.add(dotted(loc[:-1]))
                    else:
                        parent.pop(loc[-1], None)
                elif known:
                    parent[int(loc[-1])] = copy.deepcopy(value)
    return None, set_aside


def _load(path: Path) -> Loaded:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return Loaded(None, [Problem(str(path), f"cannot read: {exc.strerror}", "pass --team PATH to an existing team.yaml")])
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        return Loaded(None, [Problem(f"line {line}", f"{path} is not UTF-8 text (byte {exc.start})",
                                     "save it as UTF-8 (any editor's 'UTF-8' encoding), or start again from templates/team.example.yaml")])
    data, problems = _parse(text)
    if data is None and problems:
        return Loaded(None, problems)
    if not isinstance(data, dict):
        return Loaded(None, [Problem("(top level)", "must be a mapping of sections", "start from templates/team.example.yaml")])

    problems += _scan_secrets(text, data) + _scan_placeholders(data)
    problems += _removed_keys(data)
    try:
        config = TeamConfig.model_validate(data)
    except ValidationError as exc:
        problems += _from_validation_error(exc, skip={p.field for p in problems})
        stand_in, set_aside = _stand_in(data)
        return Loaded(None, problems, stand_in, set_aside)
    return Loaded(None if errors(problems) else config, problems, config)
