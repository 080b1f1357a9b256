"""docs/: generated parts are current, links between documents resolve."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


@pytest.mark.parametrize("script", ["gen_cli_doc.py", "gen_doc_snippets.py"])
def test_generated_docs_are_current(script: str) -> None:
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--check"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, f"{run.stderr.strip()}"


def test_relative_links_resolve() -> None:
    for doc in [*DOCS.glob("*.md"), ROOT / "README.md"]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name}: broken link {target}"


def test_index_lists_every_document() -> None:
    index = (DOCS / "README.md").read_text()
    for doc in DOCS.glob("*.md"):
        if doc.name != "README.md":
            assert f"({doc.name})" in index, f"docs/README.md does not link {doc.name}"


# ------------------------------------------------------------------ commands in the docs

SHELL_LANGS = ("", "sh", "bash", "console", "shell")  # a bare ``` block of commands too
FENCE = re.compile(r"```(\S*)\s*")


def shell_blocks(text: str) -> list[str]:
    """The bodies of the fenced shell (or bare) code blocks of a Markdown text."""
    blocks, lang, body = [], None, []
    for line in text.splitlines():
        fence = FENCE.fullmatch(line)
        if fence and lang is None:
            lang, body = fence.group(1), []
        elif fence and not fence.group(1):
            if lang in SHELL_LANGS:
                blocks.append("\n".join(body) + "\n")
            lang = None
        elif lang is not None:
            body.append(line)
    return blocks


# docs/cli.md is generated from --help: its blocks are usage synopses, not commands
COMMAND_DOCS = [ROOT / "README.md", *sorted(d for d in DOCS.glob("*.md") if d.name != "cli.md")]


def doc_commands() -> list[tuple[str, list[str]]]:
    """Every ``maiac ...`` command in README.md and docs/*.md shell blocks, as argv after
    ``maiac``: continuations joined, comments, pipes and redirections cut, ``$`` prompts
    and optional ``[...]`` parts dropped (the docs' notation for what may be added)."""
    import shlex

    out = []
    for doc in COMMAND_DOCS:
        for block in shell_blocks(doc.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.strip().removeprefix("$ ")
                if not line.startswith("maiac "):
                    continue
                line = re.split(r"\s#\s|\s\|\s", line)[0]
                while re.search(r"\[[^\[\]]*\]", line):
                    line = re.sub(r"\s*\[[^\[\]]*\]", "", line)
                line = re.sub(r"\s\d?>\s*\S+", "", line)
                out.append((f"{doc.name}: {line}", shlex.split(line)[1:]))
    return out


def test_docs_show_commands() -> None:
    assert len(doc_commands()) >= 40


@pytest.mark.parametrize("where,argv", doc_commands(), ids=lambda v: v if isinstance(v, str)
                         else None)
def test_documented_command_is_valid(where: str, argv: list[str]) -> None:
    """Every documented command parses as the CLI says today (command, options, choices,
    ranges), names targets, target parameters, quant specs, shapes and pipelines that
    exist, and every repository file it mentions is there; the ones that need no model
    file run (exit 0). So a stale option, pipeline or path in the docs fails CI."""
    import click
    from click.testing import CliRunner

    from maiac.cli import main, parse_kv, parse_shape

    name, rest = argv[0], argv[1:]  # the docs give no options before the command
    ctx = main.make_context("maiac", [name])
    cmd = main.get_command(ctx, name)
    assert cmd is not None, f"{where}: no command {name!r}"
    try:
        sub = cmd.make_context(name, list(rest), parent=ctx)
    except click.UsageError as err:
        pytest.fail(f"{where}: {err.format_message()}")
    params = sub.params
    for value in [*argv]:
        if re.match(r"(tests|examples|scripts|bench|docs)/", value):
            assert (ROOT / value).exists(), f"{where}: {value} is not in the repository"
    from maiac.runtime.target import get_target

    if params.get("target"):
        get_target(params["target"], parse_kv(tuple(params.get("target_param") or ()),
                                              "--target-param") or {})
    for shape in params.get("shape") or ():
        parse_shape(shape)
    quant = params.get("quant")
    if isinstance(quant, str) and "," not in quant.replace("w=", "").replace("a=", ""):
        from maiac.passes.quant_spec import parse_quant_spec

        parse_quant_spec(quant)
    plugins = tuple(params.get("plugins") or ())
    pipeline = params.get("pipeline")
    if isinstance(pipeline, str) and all((ROOT / p).is_file() for p in plugins):
        # (a plugin of the reader's own, like README's my_passes.py, names passes we lack)
        from maiac.cli import load_plugins
        from maiac.driver import parse_passes

        load_plugins(plugins)
        parse_passes(pipeline)
    needs_file = any(not v.startswith("-") and "=" not in v and v.endswith(
        (".onnx", ".maia", ".mlir", ".npz", ".npy")) for v in rest)
    if not needs_file and name in ("passes", "target", "ops"):
        r = CliRunner().invoke(main, list(argv))
        assert r.exit_code == 0, f"{where}: {r.output}"


REPO_PATH = re.compile(r"(?<![\w/.~-])(?:docs|runtime|maiac|passes|ir|tests|examples|bench|scripts)/"
                       r"[\w./*<>-]*[\w*>]")


def test_docs_and_help_cite_only_files_in_the_repository() -> None:
    """No document or --help text points a user at a file they cannot open (the design
    notes live outside the repository: "DESIGN §5" helps nobody)."""
    from click.testing import CliRunner

    from maiac.cli import main

    texts = {doc.name: doc.read_text() for doc in [ROOT / "README.md", *DOCS.glob("*.md")]}
    for name in main.list_commands(None):  # type: ignore[arg-type]
        r = CliRunner().invoke(main, [name, "--help"])
        assert r.exit_code == 0, r.output
        texts[f"maiac {name} --help"] = r.output
    for where, text in texts.items():
        assert "DESIGN" not in text, f"{where} cites DESIGN"
        for path in REPO_PATH.findall(text):
            path = path.rstrip(".")
            assert (ROOT / path).exists() or (ROOT / path.replace("maiac/", "", 1)).exists() \
                or "*" in path or "<" in path, f"{where}: {path} is not in the repository"
