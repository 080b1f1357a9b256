"""maiac.passes: one module per pass; ``register_pass`` for plugin authors."""

from typing import Any

_REGISTRY_NAMES = ("PASSES", "register_pass", "parse_pipeline", "load_pass_plugin")


def __getattr__(name: str) -> Any:
    # Lazy, so importing one pass module does not import every pass.
    if name in _REGISTRY_NAMES:
        from maiac.passes import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'maiac.passes' has no attribute {name!r}")
