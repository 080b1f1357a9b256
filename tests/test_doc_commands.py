"""Every ``maiac`` command in README.md and docs/*.md runs, in the order its document gives
it, in a folder where the files the reader is assumed to have are fixtures: ``model.onnx``
(maiac.models' 2-layer Llama, its input_ids dims made symbolic: batch, sequence), ``in.npz`` / ``ids.npy``
(its inputs), ``out.npz`` (onnxruntime's outputs on them), ``decoder.onnx`` (a KV-cache decoder), ``my_passes.py`` (a plugin with the
``my-pass`` the README names), ``input.mlir``; the repository's folders are linked in, so
``tests/data/...`` and ``examples/...`` resolve. ``python -c`` lines (how a document makes
its model) run too. Figures a command's comment quotes (``tokens/s 170``, ``TPOT 107 us``)
are checked against its output, within 10 %: when the timing model moves them, the
document fails here, not in a reader's hands."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from test_docs import COMMAND_DOCS, ROOT, shell_blocks

from maiac.cli import main

MY_PASSES = '''"""The reader's own plugin of README.md: one pass that changes nothing."""
from xdsl.passes import ModulePass

from maiac.passes import register_pass


@register_pass
class MyPass(ModulePass):
    name = "my-pass"

    def apply(self, ctx, op) -> None:
        pass
'''


def doc_lines(doc: Path) -> list[tuple[list[str], str]]:
    """``(argv, comment)`` of each ``maiac`` or ``python -c`` line of ``doc``'s shell
    blocks, in order (argv with ``maiac``/``python`` first; ``[...]`` optional parts,
    pipes and redirections dropped, as tests/test_docs.py reads them)."""
    out = []
    for block in shell_blocks(doc.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            if not (line.startswith("maiac ") or line.startswith("python -c ")):
                continue
            parts = re.split(r"\s#\s", line, maxsplit=1)
            line, comment = parts[0], (parts[1] if len(parts) > 1 else "")
            line = re.split(r"\s\|\s", line)[0]
            while re.search(r"\[[^\[\]]*\]", line) and line.startswith("maiac "):
                line = re.sub(r"\s*\[[^\[\]]*\]", "", line)
            line = re.sub(r"\s\d?>\s*\S+", "", line)
            out.append((shlex.split(line), comment))
    return out


DOC_FILES = COMMAND_DOCS
SLOW = ("perf llama3-8b", "l8d")  # minutes on 2 cores: run, but marked
# lines that name what only the reader has: checked (tests/test_docs.py), not run
NOT_RUN = {"HOST:": "a Ray cluster's address", "libcustom_ops.so": "the reader's library",
           "tokenizer.json": "the reader's tokenizer",
           "quark_model.onnx": "the reader's Quark export (its ops need their custom-op library)"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reader's folder: the fixtures above and the repository's folders."""
    from maiac import models

    work = tmp_path_factory.mktemp("docs")
    for name in ("tests", "examples", "bench", "scripts", "docs"):
        (work / name).symlink_to(ROOT / name)
    data = ROOT / "tests" / "data"
    model = models.llama_decoder(models.LLAMA_TINY, seq=128)  # 2 layers, input_ids 1x128
    for dim, name in zip(model.graph.input[0].type.tensor_type.shape.dim,
                         ("batch", "sequence"), strict=True):
        dim.dim_param = name  # symbolic, as exported models have them
    models.save_model(model, work / "model.onnx")
    shutil.copy(data / "toolchain" / "optimum_llama_kv.onnx", work / "decoder.onnx")
    ids = np.random.default_rng(0).integers(0, models.LLAMA_TINY.vocab, (1, 128))
    np.savez(work / "in.npz", input_ids=ids)
    np.save(work / "ids.npy", ids)
    np.savez(work / "calib.npz", input_ids=np.stack([ids, ids[:, ::-1]]))  # 2 samples
    # stored reference outputs (verify --reference): onnxruntime's, as a reader keeps them
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    np.savez(work / "out.npz", **dict(zip(names, sess.run(names, {"input_ids": ids}),
                                          strict=True)))
    (work / "my_passes.py").write_text(MY_PASSES)
    return work


def _run(argv: list[str], work: Path) -> Any:
    if argv[0] == "python":
        import subprocess

        return subprocess.run([sys.executable, *argv[1:]], cwd=work, capture_output=True,
                              text=True, timeout=600, check=False)
    cwd = os.getcwd()
    os.chdir(work)
    try:
        return CliRunner().invoke(main, argv[1:])
    finally:
        os.chdir(cwd)


def _prepare(argv: list[str], work: Path) -> None:
    """Files a command reads that an earlier line of its document does not make."""
    if "input.mlir" in argv and not (work / "input.mlir").exists():
        r = _run(["maiac", "compile", "model.onnx", "--shape", "input_ids=1x128", "--emit",
                  "onnx", "-o", "input.mlir", "--emit-weights", "input.weights"], work)
        assert r.exit_code == 0, r.output
    needs = [v for v in argv[2:] if v.endswith(".maia") and not (work / v).exists()]
    for maia in needs:  # a program a previous document compiled
        r = _run(["maiac", "compile", "model.onnx", "--shape", "input_ids=1x128", "-o",
                  maia], work)
        assert r.exit_code == 0, r.output


FIGURE = re.compile(r"(tokens/s|TPOT|TTFT)\s+([0-9.]+(?:e[+-]?\d+)?)\s*(us|ms|s)?")


def check_figures(comment: str, output: str, where: str) -> None:
    """Each figure the comment quotes is in the output, within 10 %."""
    for label, value, unit in FIGURE.findall(comment):
        found = re.search(rf"{re.escape(label)}\s+([0-9.]+(?:e[+-]?\d+)?)\s*{unit or ''}",
                          output)
        assert found, f"{where}: the output has no {label} (quoted {value} {unit})"
        got, want = float(found.group(1)), float(value)
        assert abs(got - want) <= 0.1 * want, \
            f"{where}: {label} is {got} {unit}, the document says {value} {unit}"


def _is_slow(argv: list[str]) -> bool:
    return any(k in " ".join(argv) for k in SLOW)


# run by default; the others compile many models or sweep perf (minutes on 2 cores when
# the perf cache is cold) and run with MAIAC_SLOW_DOCS=1
DEFAULT_DOCS = ("README.md", "formats.md", "machine.md", "pass-authors.md")


def _cases() -> list[Any]:
    slow_docs = pytest.mark.skipif(not os.environ.get("MAIAC_SLOW_DOCS"),
                                   reason="minutes on 2 cores: MAIAC_SLOW_DOCS=1 runs it")
    return [pytest.param(doc, lines, id=doc.name,
                         marks=[] if doc.name in DEFAULT_DOCS else [pytest.mark.slow, slow_docs])
            for doc in DOC_FILES if (lines := doc_lines(doc))]


def _run_lines(doc: Path, lines: list[tuple[list[str], str]], workdir: Path) -> None:
    """Exit 0 (a verify that fails exits 1: also a stale document), figures as quoted."""
    for argv, comment in lines:
        where = f"{doc.name}: {' '.join(argv)}"
        if any(k in where for k in NOT_RUN):
            continue
        _prepare(argv, workdir)
        r = _run(argv, workdir)
        if argv[0] == "python":
            assert r.returncode == 0, f"{where}: {r.stderr[-2000:]}"
            continue
        # a quantized verify of the fixture's random weights may miss the cosine bar (exit
        # 1, its table printed): the document shows the command, not that model's accuracy
        ok = (0, 1) if argv[1] == "verify" and "--quant" in argv else (0,)
        assert r.exit_code in ok, f"{where}: exit {r.exit_code}: {r.output[-3000:]}"
        check_figures(comment, r.output, where)


@pytest.mark.parametrize(("doc", "lines"), _cases())
def test_every_documented_command_runs(workdir: Path, doc: Path,
                                       lines: list[tuple[list[str], str]]) -> None:
    """The lines of each document but the slow ones (``SLOW``), in order."""
    _run_lines(doc, [(a, c) for a, c in lines if not _is_slow(a)], workdir)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MAIAC_SLOW_DOCS"),
                    reason="minutes on 2 cores (an 8B perf sweep, an 8B shape-only compile): "
                           "MAIAC_SLOW_DOCS=1 runs them")
@pytest.mark.parametrize(("doc", "lines"), _cases())
def test_slow_documented_commands_run(workdir: Path, doc: Path,
                                      lines: list[tuple[list[str], str]]) -> None:
    """The slow lines (with the line making their input, a ``python -c`` before them)."""
    slow = [i for i, (a, _) in enumerate(lines) if _is_slow(a)]
    _run_lines(doc, [lines[i] for i in sorted({j for i in slow for j in (i - 1, i)
                                               if j >= 0 and (j == i or
                                                              lines[j][0][0] == "python")})],
               workdir)


def test_figures_are_read_from_comments() -> None:
    """The figure check sees what machine.md quotes, and fails on a drifted one."""
    comment = "tokens/s 1.9e+04 (decode, 2 tokens per call, from graph); TPOT 107 us"
    check_figures(comment, "tokens/s 1.95e+04 ... TPOT 101.0 us", "x")
    with pytest.raises(AssertionError, match="TPOT"):
        check_figures(comment, "tokens/s 1.9e+04 ... TPOT 150 us", "x")
    figures = [f for doc in DOC_FILES for _, c in doc_lines(doc) for f in FIGURE.findall(c)]
    assert len(figures) >= 3, figures
