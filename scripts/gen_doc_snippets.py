"""Fill the generated blocks of docs/*.md from the compiler itself, so they stay true.

A block is ``<!-- gen:KEY -->`` ... ``<!-- /gen -->``; everything between the markers is
replaced. Keys: ``ir-import``, ``ir-onnx``, ``ir-maia``, ``ir-quantize``, ``ir-tiled``,
``ir-planned``, ``asm`` (the pipeline run on ``maiac.models.mlp(layers=1)``),
``pipeline`` (the default pipeline), ``target-params`` (maia200's parameter table),
``formats`` (runtime/formats.py's formats).

Usage: python scripts/gen_doc_snippets.py [--check]
"""

from __future__ import annotations

import argparse
import io
import re
import sys
from collections.abc import Callable
from pathlib import Path

from xdsl.printer import Printer

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BLOCK = re.compile(r"(<!-- gen:([a-z-]+) -->\n)(.*?)(<!-- /gen -->)", re.S)
TARGET_ATTR = re.compile(r'maia\.target = "(?:[^"\\]|\\.)*"')


def _text(module: object) -> str:
    buf = io.StringIO()
    Printer(stream=buf).print_op(module)  # type: ignore[arg-type]
    return TARGET_ATTR.sub('maia.target = "{...}"', buf.getvalue())


def ir_after_each_pass(quant: str | None = None) -> dict[str, str]:
    """The IR of ``mlp(layers=1)`` after import and after each pass of the default pipeline."""
    from maiac import models
    from maiac.driver import default_pipeline, import_for_target, parse_passes

    module = import_for_target(models.mlp(layers=1), None, "maia200", None, False)
    out = {"import": _text(module)}
    from maiac.driver import context

    ctx = context()
    for p in parse_passes(default_pipeline(quant)):
        p.apply(ctx, module)
        out[p.name] = _text(module)
    out["module"] = module  # type: ignore[assignment]
    return out


def pick(text: str, keep: Callable[[str], bool], limit: int = 12) -> str:
    """The module's header lines plus up to ``limit`` body lines for which ``keep`` holds."""
    lines = text.splitlines()
    body = [ln for ln in lines[2:-3] if keep(ln)][:limit]
    return "\n".join([*lines[:2], "    ...", *body, "    ...", *lines[-3:]])


def kernel(text: str, op: str) -> str:
    """The ``maia.kernel`` block of tensor-level op ``op``."""
    lines = text.splitlines()
    end = next(i for i, ln in enumerate(lines) if f'{{op = "{op}"' in ln and "}) {" in ln)
    start = max(i for i in range(end) if lines[i].strip() == '"maia.kernel"() ({')
    return "\n".join(["    ...", *lines[start:end + 1], "    ..."])


def fc1(line: str) -> bool:
    return "fc1" in line


def code(text: str, lang: str = "mlir") -> str:
    return f"```{lang}\n{text.rstrip()}\n```\n"


def ir_blocks() -> dict[str, str]:
    ir = ir_after_each_pass()
    blocks = {
        "ir-import": code(pick(ir["import"], fc1)),
        "ir-onnx": code(pick(ir["canonicalize"], lambda ln: "onnx.Constant" not in ln)),
        "ir-maia": code(pick(ir["lower-onnx-to-maia"], lambda ln: "maia.constant" not in ln)),
        "ir-tiled": code(kernel(ir["tile"], "layers.0.fc1/MatMul_5")),
        "ir-planned": code(pick(ir["plan-memory"],
                                lambda ln: '"maia.buffer"' in ln and "fc1" in ln, 4)),
    }
    from maiac.passes.registry import PASSES

    if "quantize" in PASSES:
        q = ir_after_each_pass("mxfp4")
        blocks["ir-quantize"] = code(pick(q["quantize"], fc1))
    else:
        blocks["ir-quantize"] = ("*(No `quantize` pass is registered in this build yet; this "
                                 "block fills in when it is.)*\n")
    from maiac.passes.emit import emit_program
    from maiac.runtime.listing import format_program

    listing = format_program(emit_program(ir["module"]))  # type: ignore[arg-type]
    blocks["asm"] = code("\n".join(listing.splitlines()[:24]) + "\n...", "text")
    return blocks


def pipeline_block() -> str:
    from maiac.driver import STAGES, default_pipeline

    stages = "\n".join(f"{name:<6} {passes}" for name, passes in STAGES.items())
    return code(f"$ maiac passes --pipeline\n{default_pipeline()}\n\n"
                f"# stages (--emit stops at the end of one)\n{stages}", "text")


def target_block() -> str:
    from maiac.runtime.target import get_target

    t = get_target("maia200")
    rows = ["| parameter | value | unit | status | source / reason |", "|---|---|---|---|---|"]
    for r in t.params_table():
        v = r["value"]
        value = f"{v:.4g}" if isinstance(v, float) else str(v)
        rows.append(f"| `{r['key']}` | {value} | {r['unit']} | {r['status']} | "
                    f"{str(r['source']).replace('|', '/')} |")
    head = (f"maia200: {t.n_tiles} tiles ({t.n_clusters} clusters x {t.tiles_per_cluster}), "
            f"{t.sram_bytes / 2**20:.0f} MiB SRAM in total.\n\n")
    return head + "\n".join(rows) + "\n"


def formats_block() -> str:
    from maiac.runtime import formats

    rows = ["| format | element | bits | block | scale | bytes for 4096 elements |",
            "|---|---|---|---|---|---|"]
    scale = {"none": "—", "fp32": "fp32 per tensor or per channel", "e8m0": "E8M0 per block",
             "e4m3+fp32": "E4M3 per block + fp32 per tensor"}
    for name, f in formats.FORMATS.items():
        rows.append(f"| `{name}` | {f.elem_name} | {f.bits} | {f.block_size or '—'} | "
                    f"{scale[f.scale_kind]} | {formats.qtensor_nbytes((4096,), name)} |")
    modes = ", ".join(f"`{m}`" for m in formats.SCALE_MODES)
    return "\n".join(rows) + f"\n\nMX scale rules (`scale_mode`): {modes}.\n"


def render_all() -> dict[str, str]:
    blocks = ir_blocks()
    blocks["pipeline"] = pipeline_block()
    blocks["target-params"] = target_block()
    blocks["formats"] = formats_block()
    return blocks


def fill(text: str, blocks: dict[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        key = m.group(2)
        if key not in blocks:
            raise SystemExit(f"unknown generated block '{key}' (known: {', '.join(blocks)})")
        return m.group(1) + blocks[key] + m.group(4)

    return BLOCK.sub(repl, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    args = parser.parse_args()
    blocks = render_all()
    stale = []
    for path in sorted(DOCS.glob("*.md")):
        old = path.read_text(encoding="utf-8")
        new = fill(old, blocks)
        if new != old:
            stale.append(path)
            if not args.check:
                path.write_text(new, encoding="utf-8")
                print(f"updated {path.relative_to(ROOT)}")
    if args.check and stale:
        print("stale: " + ", ".join(str(p.relative_to(ROOT)) for p in stale)
              + " (run python scripts/gen_doc_snippets.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
