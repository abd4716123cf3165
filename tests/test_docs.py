"""The README and docs/ against the code: every command parses with the CLI, every YAML snippet
validates as what it claims to be (experiment, experiment fragment, targets file, search space),
every Python snippet compiles and calls `dime_nas.api` as it is, every link resolves, and the
reference pages list every config key and every command option. Fast: nothing is run."""
from __future__ import annotations

import ast
import configparser
import dataclasses
import inspect
import re
import shlex
import typing
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
LINK = re.compile(r"\]\(([^)\s]+)\)")
# the smallest experiment a fragment is merged into before it is validated
BASE_EXPERIMENT = {"name": "doc", "teacher": {"shapes": {}}, "data": {"shapes": {}}, "space": "tiny"}


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _blocks(lang: str) -> list[tuple[str, str]]:
    """(doc, code) of every fenced block in language ``lang``."""
    return [(_name(doc), code) for doc in DOCS for found, code in FENCE.findall(doc.read_text()) if found == lang]


def _prose(text: str) -> str:
    return FENCE.sub("", text)


def _command_lines(blocks_only: bool = False) -> list[tuple[str, str]]:
    """(doc, line) of every shell line of the docs: in bash blocks, and (unless ``blocks_only``)
    inline code in prose."""
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for lang, code in FENCE.findall(text):
            if lang in ("bash", "sh", ""):
                for line in code.replace("\\\n", " ").splitlines():
                    out += [(_name(doc), part) for part in line.split(" # ")[0].split("&&")]
        if not blocks_only:
            out += [(_name(doc), span) for span in INLINE.findall(_prose(text))]
    return [(doc, line.strip().rstrip("&").strip()) for doc, line in out if line.strip()]


def _argv(line: str) -> list[str] | None:
    """A usage line as arguments: `[--x X]` made plain, `a|b` the first choice, placeholders kept."""
    if not re.match(r"([A-Z_]+=\S*\s+)*dime-nas(\s|$)", line):
        return None
    words = shlex.split(line.replace("\\|", "|"))
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # OMP_NUM_THREADS=1 dime-nas ...
        words.pop(0)
    if not words or words[0] != "dime-nas":
        return None
    argv = []
    for word in words[1:]:
        word = word.strip("[]")
        if word in ("", "...", "…"):
            continue
        word = "1" if re.fullmatch(r"[A-Z]", word) else word  # [--trials N]: a number
        argv.append(word.split("|")[0] if "|" in word and not word.startswith("'") else word)
    return argv


def _known(argv: list[str]) -> str | None:
    """What of ``argv`` the CLI does not know: a command or an option (None: all known)."""
    import argparse

    from dime_nas.cli import _parser

    parser, rest = _parser(), list(argv)
    while rest:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or rest[0].startswith("-"):
            break
        if rest[0] not in subs[0].choices:
            return f"command {rest[0]}"
        parser = subs[0].choices[rest.pop(0)]
    options = {o for a in parser._actions for o in a.option_strings}
    unknown = [w.split("=")[0] for w in rest if w.startswith("--") and w.split("=")[0] not in options]
    return f"option {unknown[0]}" if unknown else None


def test_every_dime_nas_command_in_the_docs_exists():
    """Commands and options named anywhere (prose mentions them without their arguments)."""
    checked = 0
    for doc, line in _command_lines():
        argv = _argv(line)
        if argv is not None:
            problem = _known(argv)
            assert problem is None, f"{doc}: `{line}`: no such {problem}"
            checked += 1
    assert checked >= 40  # the extraction itself works


def test_every_command_of_a_shell_block_parses():
    """A command the reader copies parses whole: its arguments, required ones included."""
    from dime_nas.cli import _parser

    checked = 0
    for doc, line in _command_lines(blocks_only=True):
        argv = _argv(line)
        if argv is None:
            continue
        try:
            args = _parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{doc}: `{line}` does not parse as a dime-nas command", pytrace=False)
        assert hasattr(args, "func"), f"{doc}: `{line}` names no command"
        checked += 1
    assert checked >= 15


def test_make_targets_scripts_and_extras_named_in_the_docs_exist():
    makefile = (ROOT / "Makefile").read_text()
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    extras = set(cfg["options.extras_require"])
    for doc, line in _command_lines():
        words = line.split()
        if words[:1] == ["make"] and len(words) > 1 and "=" not in words[1]:
            assert re.search(rf"^{re.escape(words[1])}:", makefile, re.M), f"{doc}: no make target {words[1]}"
        if words[:1] == ["python"] and len(words) > 1 and words[1].endswith(".py"):
            assert (ROOT / words[1]).is_file(), f"{doc}: no script {words[1]}"
        for extra in re.findall(r"dime-nas\[([\w,]+)\]", line):
            assert set(extra.split(",")) <= extras, f"{doc}: unknown extra in {line}"


def _validate_yaml(data: dict, where: str) -> str:
    """Validate a snippet as what it is; returns the kind."""
    from dime_nas.config import ExperimentConfig
    from dime_nas.cost.targets import Target
    from dime_nas.metrics import Budget
    from dime_nas.space import SearchSpace
    from dime_nas.typed_yaml import from_mapping

    if {"image", "text"} & set(data):
        SearchSpace(data, source=where)
        return "space"
    if data and all(isinstance(v, dict) and "description" in v for v in data.values()):
        for name, fields in data.items():
            Target.from_dict(name, fields, source=where)
        return "targets"
    known = {f.name for f in dataclasses.fields(ExperimentConfig)}
    assert set(data) <= known, f"{where}: unknown experiment key(s) {sorted(set(data) - known)}"
    config = from_mapping(ExperimentConfig, {**BASE_EXPERIMENT, **data}, file=where)
    for budget in config.budgets:
        Budget.parse(budget)
    return "experiment" if set(BASE_EXPERIMENT) <= set(data) else "fragment"


def test_every_yaml_snippet_validates():
    kinds = []
    for doc, code in _blocks("yaml"):
        data = yaml.safe_load(code)
        assert isinstance(data, dict), f"{doc}: a YAML snippet that is not a mapping:\n{code}"
        kinds.append(_validate_yaml(data, doc))
    assert {"experiment", "fragment", "targets", "space"} <= set(kinds)


def test_a_wrong_key_in_a_snippet_is_caught():
    """The check above fails on a snippet that has rotted."""
    from dime_nas.errors import ConfigError

    with pytest.raises(ConfigError, match="stepz"):
        _validate_yaml({"distill": {"stepz": 3}}, "doc")
    with pytest.raises(ConfigError, match="url"):
        _validate_yaml({"b": {"description": "x", "backend": "remote", "url": "http://h:1", "token_env": "T"}}, "doc")


def test_every_python_snippet_compiles_and_calls_the_api_as_it_is():
    from dime_nas import api

    for doc, code in _blocks("python"):
        tree = ast.parse(code, filename=doc)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dime_nas"):
                module = __import__(node.module, fromlist=[a.name for a in node.names])
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{doc}: {node.module} has no {alias.name}"
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "api"):
                fn = getattr(api, node.func.attr, None)
                assert fn is not None, f"{doc}: dime_nas.api has no {node.func.attr}"
                params = inspect.signature(fn).parameters
                for kw in node.keywords:
                    assert kw.arg in params, f"{doc}: api.{node.func.attr} takes no {kw.arg}="


# result files a benchmark writes that have not been run yet (the link names where they will be)
NOT_YET_RUN: set[str] = set()  # results a page links to before their benchmark has written them


def test_every_link_resolves():
    for doc in DOCS:
        text = doc.read_text()
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):  # http(s), mailto
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if str(file.relative_to(ROOT)) in NOT_YET_RUN:
                continue
            assert file.exists(), f"{_name(doc)}: broken link {target}"
            if anchor and file.suffix == ".md":
                slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-")
                         for h in re.findall(r"^#+ (.*)$", file.read_text(), re.M)}
                assert anchor in slugs, f"{_name(doc)}: no heading #{anchor} in {path or _name(doc)}"


def _config_keys(cls: type, prefix: str = "") -> list[tuple[str, type, str]]:
    """(dotted key, the dataclass holding it, field name) of every key of an experiment file."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "source":  # set by the loader, not written
            continue
        out.append((prefix + f.name, cls, f.name))
        tp = hints[f.name]
        inner = [a for a in (tp, *typing.get_args(tp), *[b for a in typing.get_args(tp) for b in typing.get_args(a)])
                 if dataclasses.is_dataclass(a)]
        if inner:
            out += _config_keys(inner[0], prefix + f.name + ".")
    return out


def test_the_config_reference_lists_every_key_and_only_real_ones():
    """A key is documented when it appears as `section.key` for some section of its type
    (full_distill shares distill's table)."""
    from dime_nas.config import ExperimentConfig

    text = (ROOT / "docs" / "config.md").read_text()
    keys = _config_keys(ExperimentConfig)
    documented = {(cls, name) for key, cls, name in keys if f"`{key}`" in text}
    missing = sorted(key for key, cls, name in keys if (cls, name) not in documented)
    assert not missing, f"docs/config.md does not document {missing}"
    table_keys = set(re.findall(r"^\| `([\w.]+)` \|", text.split("## Every key", 1)[1].split("## Targets files")[0],
                                re.M))
    assert table_keys and table_keys <= {k for k, _, _ in keys}, sorted(table_keys - {k for k, _, _ in keys})


def _shown_default(field: dataclasses.Field) -> str | None:
    """A field's default as the reference table writes it (None: a section or a list of them)."""
    if field.default is not dataclasses.MISSING:
        return field.default if isinstance(field.default, str) else repr(field.default)
    if field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
        sections = dataclasses.is_dataclass(value) or (isinstance(value, list) and value
                                                        and dataclasses.is_dataclass(value[0]))
        return None if sections else repr(value)
    return "required"


def test_the_config_reference_states_each_default_as_the_code_has_it():
    from dime_nas.config import ExperimentConfig

    text = (ROOT / "docs" / "config.md").read_text().split("## Every key", 1)[1].split("## Targets files")[0]
    shown = dict(re.findall(r"^\| `([\w.]+)` \| `([^`]*)` \|", text, re.M))
    for key, cls, name in _config_keys(ExperimentConfig):
        field = next(f for f in dataclasses.fields(cls) if f.name == name)
        default = _shown_default(field)
        if key in shown and default is not None and shown[key] != "(section)":
            assert shown[key] == default, f"docs/config.md: {key} defaults to {default}, the page says {shown[key]}"


def test_the_command_reference_lists_every_command_and_option():
    import argparse

    from dime_nas.cli import _parser

    text = (ROOT / "docs" / "commands.md").read_text()

    def walk(parser: argparse.ArgumentParser, words: list[str]):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, [*words, name])
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    yield " ".join(words), option
        yield " ".join(words), None

    for command, option in walk(_parser(), ["dime-nas"]):
        assert f"`{command}" in text, f"docs/commands.md does not show `{command}`"
        assert option is None or option in text, f"docs/commands.md does not show {command} {option}"


def test_the_readme_is_short_and_starts_with_the_two_set_up_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    first = FENCE.search((ROOT / "README.md").read_text()).group(2)
    assert first.splitlines()[0].startswith("make demo") and first.splitlines()[1].startswith("make test")
