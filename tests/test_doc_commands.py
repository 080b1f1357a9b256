"""Every ``maiac`` command in README.md and docs/*.md runs by default, in the order its
document gives it, in a folder where the files the reader is assumed to have are fixtures:
``model.onnx`` (maiac.models' 2-layer Llama, its input_ids dims made symbolic: batch,
sequence), ``in.npz`` / ``ids.npy`` (its inputs), ``out.npz`` (onnxruntime's outputs on
them), ``calib.npz``, ``decoder.onnx`` (a KV-cache decoder), ``tokenizer.json`` (a BPE
trained on tests/data/text), ``my_passes.py`` (a plugin with the ``my-pass`` the README
names), ``input.mlir``, and ``quark/`` (``quark_model.onnx``: tests/data's Quark export, with
its inputs and reference as ``in.npz`` / ``out.npz``); the repository's folders are linked
in, so ``tests/data/...`` and ``examples/...`` resolve. ``python -c`` lines (how a document
makes its model) run too; ``--backend ray`` lines share one local Ray; the perf cache starts
cold. Figures a command's comment quotes (``tokens/s 119``, ``TPOT 12.8 us``) are checked
against its output, within 10 %: when the timing model moves them, the document fails here,
not in a reader's hands.

No line is skipped. Two kinds run otherwise than written, and every failure message lists
them: ``maiac perf`` sweeps at a small context (``as_run``; MAIAC_FULL_DOCS=1 runs them as
written, minutes on 2 cores), and lines naming what only the reader has (a Ray cluster's
address, a custom-op library: ``ERROR_PATHS``) run without it and must fail with the
error a reader without it gets; the Ray address line then runs again against the test's
own local Ray, by its address."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import click
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
    pipes, redirections and leading ``VAR=value`` assignments dropped, as
    tests/test_docs.py reads them)."""
    out = []
    for block in shell_blocks(doc.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            line = re.sub(r"^(?:\w+=\S+\s+)+(?=maiac )", "", line)  # LD_LIBRARY_PATH=... maiac
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
# ``python FILE.py`` lines: run by the test named, or benchmarks (minutes each: listed)
SCRIPTS_RUN_BY = {"examples/": "tests/test_examples.py",
                  "scripts/gen_doc_snippets.py": "tests/test_docs.py"}


def script_lines(doc: Path) -> list[str]:
    """The ``python FILE.py ...`` lines of ``doc``'s shell blocks (not ``python -c``)."""
    return [line.split("#")[0].strip() for block in shell_blocks(doc.read_text())
            for line in block.replace("\\\n", " ").splitlines()
            if re.match(r"(\$ )?python3? (?!-c )\S+\.py", line.strip())]


# MAIAC_FULL_DOCS=1: the perf sweeps too exactly as written (minutes on 2 cores: the
# prefill of a 32k context takes a minute a point to tile)
FULL = bool(os.environ.get("MAIAC_FULL_DOCS"))
PERF_CONTEXT = "256"  # the context the default run sweeps at (see as_run)
# what only the reader has: the line runs, and must fail as the reader would see it fail
# without it (exit 2, this in the message)
RAY_ADDRESS = "HOST:6379"  # also run against the test's own Ray (by its GCS address)
ERROR_PATHS = {RAY_ADDRESS: ("a Ray cluster's address", "--ray-address 'HOST:6379'"),
               "libcustom_ops.so": ("the reader's custom-op library",
                                    "libcustom_ops.so: no such --ort-custom-op-lib library"),
               "$LIB": ("Quark's custom-op library (amd-quark, torch)",
                        "$LIB: no such --ort-custom-op-lib library")}
HAVE_RAY = importlib.util.find_spec("ray") is not None  # the [ray] extra (CI installs it)
QUARK = "quark_model.onnx"  # the reader's Quark export: tests/data's, in its own folder


SWEEP_AXES = ("--batch", "--quant", "--kv-cache")  # run at their first value


def as_run(argv: list[str]) -> tuple[list[str], str]:
    """The line as the runner runs it and, when that differs from the document, how.

    ``maiac perf`` sweeps (not with MAIAC_FULL_DOCS=1) run one small point per setting
    the document shows: ``--context 256``, ``--batch``/``--quant``/``--kv-cache`` at their
    first value (given or default), ``--chips`` at its first and last (the scaling
    figures need both), in this process (``--jobs 1``); ``--preset paper`` keeps its point
    but the context. What the document shows is the command and its options; the sweep's
    figures are tests/test_perf.py's, and a 32k-context prefill point alone takes a
    minute on 2 cores to tile."""
    if FULL or argv[:2] != ["maiac", "perf"]:
        return argv, ""
    perf = main.get_command(click.Context(main), "perf")
    assert perf is not None
    defaults = {o: p.default for p in perf.params for o in p.opts}
    out, changes = list(argv), []

    def put(option: str, value: str) -> None:
        if option in out:
            i = out.index(option) + 1
            if out[i] == value:
                return
            out[i] = value
        else:
            out.extend([option, value])
        changes.append(f"{option} {value}")

    put("--context", PERF_CONTEXT)
    if "--preset" not in out:
        for option in SWEEP_AXES:
            given = out[out.index(option) + 1] if option in out else str(defaults[option])
            put(option, given.split(",")[0])
    if "--chips" in out:
        chips = out[out.index("--chips") + 1].split(",")
        put("--chips", ",".join(dict.fromkeys([chips[0], chips[-1]])))
    out.extend(["--jobs", "1"])
    return out, "run with " + ", ".join(changes)


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
    _tokenizer(work / "tokenizer.json", data / "text" / "austen_pride_and_prejudice_ch1.txt")
    quark = work / "quark"  # a Quark export with its inputs and Quark's outputs on them
    quark.mkdir()
    for suffix, name in ((".onnx", QUARK), (".inputs.npz", "in.npz"), (".ref.npz", "out.npz")):
        shutil.copy(data / "toolchain" / f"quark_llama_mxfp4{suffix}", quark / name)
    (work / "perf-cache").mkdir()  # cold, as in a fresh clone
    return work


def _tokenizer(path: Path, text: Path) -> None:
    """A reader's tokenizer.json: BPE trained on a chapter, ids within decoder.onnx's 256."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train([str(text)], trainers.BpeTrainer(vocab_size=256, special_tokens=["[UNK]"]))
    tok.save(str(path))


@pytest.fixture(scope="module")
def ray_session() -> Any:
    """One local Ray for every ``--backend ray`` line (each would start and stop its own)."""
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


def _run(argv: list[str], work: Path) -> Any:
    if argv[0] == "python":
        import subprocess

        return subprocess.run([sys.executable, *argv[1:]], cwd=work, capture_output=True,
                              text=True, timeout=600, check=False)
    cwd = os.getcwd()
    os.chdir(work)
    try:
        return CliRunner().invoke(main, argv[1:],
                                  env={"MAIAC_CACHE_DIR": str(work / "perf-cache")})
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


def _cases() -> list[Any]:
    return [pytest.param(doc, doc_lines(doc), id=doc.name) for doc in DOC_FILES
            if doc_lines(doc) or script_lines(doc)]


def _run_lines(doc: Path, lines: list[tuple[list[str], str]], workdir: Path,
               request: pytest.FixtureRequest) -> list[str]:
    """Exit 0 (a verify that fails exits 1: also a stale document), figures as quoted;
    an ``ERROR_PATHS`` line exits 2 with its message. Returns what did not run as
    written (every failure message lists it too)."""
    not_as_written: list[str] = []
    for documented, comment in lines:
        where = f"{doc.name}: {' '.join(documented)}"
        argv, change = as_run(documented)
        if change:
            not_as_written.append(f"{where} ({change})")
        needs_ray = "--backend" in argv and "ray" in argv
        if needs_ray and HAVE_RAY:
            request.getfixturevalue("ray_session")
        cwd = workdir / "quark" if QUARK in argv else workdir
        start = time.perf_counter()
        _prepare(argv, cwd)
        r = _run(argv, cwd)
        print(f"{time.perf_counter() - start:6.1f} s  {where}")  # -s: where the time goes
        unlike = "; not as written: " + "; ".join(not_as_written) if not_as_written else ""
        if argv[0] == "python":
            assert r.returncode == 0, f"{where}: {r.stderr[-2000:]}{unlike}"
            continue
        missing = [k for k in ERROR_PATHS if k in argv]
        if needs_ray and not HAVE_RAY and not missing:  # the error a reader without it gets
            not_as_written.append(f"{where} (Ray is not installed: its error checked)")
            assert r.exit_code == 2 and "pip install 'maiac[ray]'" in r.output, r.output
            continue
        if missing:
            what, message = ERROR_PATHS[missing[0]]
            not_as_written.append(f"{where} (without {what}: its error checked)")
            assert r.exit_code == 2 and message in r.output, \
                f"{where}: without {what}: exit {r.exit_code}: {r.output[-2000:]}"
            if missing[0] != RAY_ADDRESS or not HAVE_RAY:
                continue
            # and against a cluster that is there: the test's local Ray, by its address
            ray = request.getfixturevalue("ray_session")
            address = ray.get_runtime_context().gcs_address
            argv = [address if a == RAY_ADDRESS else a for a in argv]
            not_as_written.append(f"{where} (and with --ray-address {address}: this "
                                  f"test's local Ray)")
            r = _run(argv, cwd)
        # a quantized verify of the fixture's random weights may miss the cosine bar (exit
        # 1, its table printed): the document shows the command, not that model's accuracy
        ok = (0, 1) if argv[1] == "verify" and "--quant" in argv else (0,)
        assert r.exit_code in ok, f"{where}: exit {r.exit_code}: {r.output[-3000:]}{unlike}"
        check_figures(comment, r.output, where + unlike)
    return not_as_written


@pytest.mark.parametrize(("doc", "lines"), _cases())
def test_every_documented_command_runs(workdir: Path, doc: Path,
                                       lines: list[tuple[list[str], str]],
                                       request: pytest.FixtureRequest) -> None:
    """Every line of each document, in order (``as_run`` and ``ERROR_PATHS`` say how the
    few the suite cannot run as written run instead)."""
    for line in _run_lines(doc, lines, workdir, request) + _scripts(doc):
        print("not run here as written:", line)  # -s shows them; failures list them too


def _scripts(doc: Path) -> list[str]:
    """Where each ``python FILE.py`` line of ``doc`` runs (its file must exist)."""
    out = []
    for line in script_lines(doc):
        path = line.split()[1]
        assert (ROOT / path).is_file(), f"{doc.name}: {line}: no {path} in the repository"
        runner = next((t for prefix, t in SCRIPTS_RUN_BY.items() if path.startswith(prefix)),
                      None)
        assert runner is not None or path.startswith("bench/"), \
            f"{doc.name}: {line}: no test runs {path}"
        out.append(f"{doc.name}: {line} (" + (f"runs in {runner})" if runner else
                                            "a benchmark, minutes: not run here)"))
    return out


def test_perf_lines_run_smaller_and_say_so() -> None:
    """The default run's perf sweeps: one small point per axis, what changed said."""
    argv, change = as_run(["maiac", "perf", "llama3-70b", "--chips", "1,2,4,8", "--batch",
                           "1,32", "--context", "8192"])
    if FULL:
        assert change == ""
        return
    assert argv == ["maiac", "perf", "llama3-70b", "--chips", "1,8", "--batch", "1",
                    "--context", PERF_CONTEXT, "--quant", "fp8", "--kv-cache", "bf16",
                    "--jobs", "1"]
    assert change == (f"run with --context {PERF_CONTEXT}, --batch 1, --quant fp8, "
                      f"--kv-cache bf16, --chips 1,8")
    argv, change = as_run(["maiac", "perf", "--preset", "paper"])
    assert argv == ["maiac", "perf", "--preset", "paper", "--context", PERF_CONTEXT,
                    "--jobs", "1"]
    assert as_run(["maiac", "run", "m.maia"]) == (["maiac", "run", "m.maia"], "")


def test_figures_are_read_from_comments() -> None:
    """The figure check sees what machine.md quotes, and fails on a drifted one."""
    comment = "tokens/s 1.9e+04 (decode, 2 tokens per call, from graph); TPOT 107 us"
    check_figures(comment, "tokens/s 1.95e+04 ... TPOT 101.0 us", "x")
    with pytest.raises(AssertionError, match="TPOT"):
        check_figures(comment, "tokens/s 1.9e+04 ... TPOT 150 us", "x")
    figures = [f for doc in DOC_FILES for _, c in doc_lines(doc) for f in FIGURE.findall(c)]
    assert len(figures) >= 3, figures
