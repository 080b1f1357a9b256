"""Quantization specs (``--quant SPEC``): which format each matmul's weights and activations use.

Grammar (items separated by ``,`` or ``;``, in any order)::

    SPEC     := ITEM ( [,;] ITEM )*
    ITEM     := PRESET                     fp8 | mxfp8 | mxfp6 | mxfp4 | nvfp4 | w4a8 | bf16 | fp32
              | w=FMT | a=FMT              weight / activation format (FMT: a format of
                                           runtime.formats, an alias, or none/fp32)
              | scale=floor|ceil|even|rceil   MX shared-exponent rule (default floor, OCP MX)
              | calib=max|percentile=P     how calibration turns activations into a scale
              | method=NAME[+NAME]         accuracy methods run before quantize (METHODS:
                                           hadamard = passes/rotate_hadamard.py,
                                           gptq = passes/gptq.py)
              | GLOB=PRESET|FMT|none       per-layer override by node-name pattern
    SPEC     := model                      the formats the model's own quantization nodes
                                           name (AMD Quark MX: maiac/importers/quark.py);
                                           the default for such a model

Examples: ``mxfp4``, ``w=mxfp4,a=mxfp8e4m3``, ``w=mxfp4`` (weight-only: activations stay
fp32), ``mxfp4;lm_head=mxfp8;layers.0.*=none``, ``mxfp8,scale=rceil``.

An override ``GLOB`` matches a node name when it matches some substring of it, with
``/`` and ``.`` treated alike (``layers.0.*`` matches ``/model/layers.0/mlp/MatMul``);
the last matching override wins. Only matmuls with a constant weight operand are
quantized; softmax, norms and residual adds stay fp32. A fused attention whose node has
narrow activations (any ``a``) runs its two products in bf16 (passes/quantize.py).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, replace

from maiac.runtime.errors import MaiacError
from maiac.runtime.formats import FORMATS, SCALE_MODES

NONE_NAMES = ("none", "fp32", "f32")
MODEL_SPEC = "model"
# module attribute the importer sets from a model's own quantization nodes:
# JSON {matmul node name: {"w": FMT|null, "a": FMT|null, "scale_mode": MODE}}
MODEL_QUANT_ATTR = "maia.model_quant"
ALIASES: dict[str, str] = {
    "fp8": "fp8e4m3", "e4m3": "fp8e4m3", "e5m2": "fp8e5m2", "mxfp8": "mxfp8e4m3",
    "mxfp6": "mxfp6e2m3", "fp4": "mxfp4", "nvfp4": "nvfp4", "bfloat16": "bf16",
}
# preset -> (weight format, activation format); None = keep fp32
PRESETS: dict[str, tuple[str | None, str | None]] = {
    "fp8": ("fp8e4m3", "fp8e4m3"),
    "mxfp8": ("mxfp8e4m3", "mxfp8e4m3"),
    "mxfp6": ("mxfp6e2m3", "mxfp6e2m3"),
    "mxfp4": ("mxfp4", "mxfp4"),
    "nvfp4": ("nvfp4", "nvfp4"),
    "w4a8": ("mxfp4", "mxfp8e4m3"),
    "bf16": ("bf16", "bf16"),
    "fp32": (None, None),
    "none": (None, None),
}
SETTING_KEYS = ("w", "a", "scale", "calib", "method")
# method=NAME -> the pass the default pipeline runs before `quantize`, in this order
# ({spec}: the quoted spec, for passes that need the formats)
METHODS: dict[str, str] = {"hadamard": "rotate-hadamard", "gptq": "gptq{{spec={spec}}}"}
# formats whose activation scale is static (per tensor): they need calibration
STATIC_ACT_FORMATS = ("fp8e4m3", "fp8e5m2", "nvfp4")


@dataclass(frozen=True)
class OpQuant:
    """The formats of one matmul: weights ``w`` and activations ``a`` (None = fp32)."""

    w: str | None
    a: str | None
    scale_mode: str = "floor"

    @property
    def active(self) -> bool:
        return self.w is not None or self.a is not None

    def describe(self) -> str:
        return f"w={self.w or 'fp32'},a={self.a or 'fp32'}"


@dataclass(frozen=True)
class QuantSpec:
    """A parsed ``--quant`` spec; ``for_op(name)`` gives the formats of one matmul."""

    text: str
    default: OpQuant
    overrides: tuple[tuple[str, OpQuant], ...] = ()
    calib_method: str = "max"
    calib_percentile: float = 100.0
    unmatched: list[str] = field(default_factory=list, compare=False)
    methods: tuple[str, ...] = ()
    # per op by exact name (the model's own quantization), before the glob overrides
    exact: tuple[tuple[str, OpQuant], ...] = ()
    from_model: bool = False  # "model": resolved from the module (MODEL_QUANT_ATTR)

    def for_op(self, name: str) -> OpQuant:
        """The formats for the op called ``name`` (exact entry, else the last matching
        override, else the default)."""
        for exact_name, q in self.exact:
            if exact_name == name:
                return q
        chosen = self.default
        for glob, q in self.overrides:
            if glob_matches(glob, name):
                chosen = replace(q, scale_mode=self.default.scale_mode)
        return chosen

    def all_op_quants(self) -> list[OpQuant]:
        return [self.default] + [q for _, q in self.overrides] + [q for _, q in self.exact]

    @property
    def needs_calibration(self) -> bool:
        """True when some activation format takes a static scale from calibration."""
        return any(q.a in STATIC_ACT_FORMATS for q in self.all_op_quants())


def glob_matches(glob: str, name: str) -> bool:
    """Substring glob match with ``/`` and ``.`` treated alike."""
    g = glob.replace("/", ".")
    n = name.replace("/", ".")
    return fnmatch.fnmatchcase(n, f"*{g}*")


def _valid_list() -> str:
    return (f"presets: {', '.join(p for p in PRESETS if p != 'none')}; formats: "
            f"{', '.join(FORMATS)}; or none")


def parse_format(token: str, what: str, spec: str) -> str | None:
    """A canonical format name for ``token`` (None for fp32/none)."""
    t = token.strip().lower()
    if t in NONE_NAMES:
        return None
    t = ALIASES.get(t, t)
    if t not in FORMATS:
        raise MaiacError(f"--quant {spec!r}: unknown {what} format {token!r} ({_valid_list()})")
    return t


def _value_quant(token: str, spec: str, scale_mode: str) -> OpQuant:
    """An override value: a preset, a format (weights and activations), or none."""
    t = token.strip().lower()
    if t in PRESETS:
        w, a = PRESETS[t]
        return OpQuant(w, a, scale_mode)
    fmt = parse_format(t, "override", spec)
    return OpQuant(fmt, fmt, scale_mode)


def parse_quant_spec(spec: str | QuantSpec | None) -> QuantSpec | None:
    """Parse ``--quant SPEC`` (see the module docstring); None/empty/fp32 → None."""
    if spec is None or isinstance(spec, QuantSpec):
        return spec
    text = spec.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    if not text:
        return None
    if text.lower() == MODEL_SPEC:
        return QuantSpec(MODEL_SPEC, OpQuant(None, None), from_model=True)
    items = [i.strip() for i in text.replace(";", ",").split(",")]
    w: str | None = None
    a: str | None = None
    w_set = a_set = False
    preset: str | None = None
    scale_mode = "floor"
    calib_method, pct = "max", 100.0
    raw_overrides: list[tuple[str, str]] = []
    methods: list[str] = []
    for item in items:
        if not item:
            raise MaiacError(f"--quant {spec!r}: empty item (stray ',' or ';')")
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        lkey = key.lower()
        if not sep:
            if lkey not in PRESETS:
                raise MaiacError(f"--quant {spec!r}: unknown preset {item!r} ({_valid_list()}; "
                                 f"or w=FMT,a=FMT, scale=MODE, PATTERN=FMT)")
            if preset is not None:
                raise MaiacError(f"--quant {spec!r}: two presets ({preset!r}, {item!r})")
            preset = lkey
            continue
        if not value:
            raise MaiacError(f"--quant {spec!r}: {key!r} needs a value")
        if lkey == "w":
            w, w_set = parse_format(value, "weight", spec), True
        elif lkey == "a":
            a, a_set = parse_format(value, "activation", spec), True
        elif lkey == "scale":
            if value.lower() not in SCALE_MODES:
                raise MaiacError(f"--quant {spec!r}: unknown scale mode {value!r} "
                                 f"(valid: {', '.join(SCALE_MODES)})")
            scale_mode = value.lower()
        elif lkey == "calib":
            calib_method, pct = _parse_calib(value, spec)
        elif lkey == "method":
            for m in value.lower().split("+"):
                if m not in METHODS:
                    raise MaiacError(f"--quant {spec!r}: unknown method {m!r} "
                                     f"(valid: {', '.join(METHODS)})")
                methods.append(m)
        else:
            raw_overrides.append((key, value))
    if preset is not None:
        pw, pa = PRESETS[preset]
        w = w if w_set else pw
        a = a if a_set else pa
    for fmt, role in ((w, "weight"), (a, "activation")):
        if fmt == "fp32":
            raise MaiacError(f"--quant {spec!r}: {role} format fp32 means none")
    default = OpQuant(w, a, scale_mode)
    overrides = tuple((glob, _value_quant(v, spec, scale_mode)) for glob, v in raw_overrides)
    if not default.active and not any(q.active for _, q in overrides):
        return None
    return QuantSpec(text, default, overrides, calib_method, pct, methods=tuple(methods))


def model_spec(table: dict[str, dict]) -> QuantSpec:
    """The ``model`` spec of a module: its matmuls' formats by name, others fp32."""
    exact = []
    for name, entry in table.items():
        scale_mode = entry.get("scale_mode", "floor")
        if scale_mode not in SCALE_MODES:
            raise MaiacError(f"--quant model: op '{name}': unknown scale mode {scale_mode!r}")
        for role in ("w", "a"):
            fmt = entry.get(role)
            if fmt is not None and fmt not in FORMATS:
                raise MaiacError(f"--quant model: op '{name}': unknown format {fmt!r}")
        exact.append((name, OpQuant(entry.get("w"), entry.get("a"), scale_mode)))
    return QuantSpec(MODEL_SPEC, OpQuant(None, None), exact=tuple(exact))


def _parse_calib(value: str, spec: str) -> tuple[str, float]:
    v = value.lower()
    if v == "max":
        return "max", 100.0
    for prefix in ("percentile=", "percentile:", "p"):
        if v.startswith(prefix):
            try:
                p = float(v[len(prefix):])
            except ValueError:
                break
            if 0 < p <= 100:
                return "percentile", p
            break
    raise MaiacError(f"--quant {spec!r}: calib={value!r}: expected max or percentile=P "
                     f"with 0 < P <= 100 (e.g. percentile=99.99)")
