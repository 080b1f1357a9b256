"""``--backend ray``: every simulated chip of a group is a Ray actor.

Each actor holds one chip's program (its shard of the weights) and its machine memory,
and runs it with runtime.multichip.ChipRunner up to each collective. At a collective
every actor returns its ``src`` block into Ray's object store; each actor then receives
the blocks of all chips as task arguments (Ray moves them actor to actor; the driver only
sees small flags) and computes its own ``dst`` — so a model whose weights do not fit one
host runs across the machines of a Ray cluster (``ray_address``), or locally
(``ray.init()``). Ray is an optional extra: ``pip install 'maiac[ray]'``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from maiac.runtime.errors import MaiacError
from maiac.runtime.program import Program


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MaiacError("--backend ray needs Ray: pip install 'maiac[ray]'") from None
    return ray


def _actor_class(ray: Any) -> Any:
    @ray.remote(num_cpus=0)  # simulated chips are mostly idle: do not reserve a core each
    class ChipActor:
        def __init__(self, program: Program) -> None:
            from maiac.runtime.multichip import ChipRunner

            self.runner = ChipRunner(program)
            self.pending: Any = None

        def start(self, inputs: dict[str, np.ndarray]) -> None:
            self.runner.start(inputs)

        @ray.method(num_returns=2)
        def step(self) -> tuple[bool, np.ndarray | None]:
            """Run to the next collective: (found one, this chip's src block)."""
            self.pending = self.runner.run_to_collective()
            if self.pending is None:
                return False, None
            return True, self.runner.collective_src(self.pending)

        def finish(self, *pieces: np.ndarray) -> None:
            self.runner.finish_collective(self.pending, pieces)

        def outputs(self) -> dict[str, np.ndarray]:
            return self.runner.outputs()

    return ChipActor


def run_on_ray(programs: Sequence[Program], inputs: dict[str, np.ndarray],
               address: str | None = None, cache: dict[str, Any] | None = None
               ) -> dict[str, np.ndarray]:
    """Run a group with one Ray actor per chip; the group's outputs.

    When Ray was already initialized by the caller, the actors (programs and machines
    loaded) stay alive in ``cache`` for the next run of the same group; a Ray this call
    starts is shut down again, actors and all.
    """
    from maiac.runtime.multichip import check_group, merge_outputs

    check_group(programs)
    ray = _ray()
    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        except Exception as err:  # a bad address, no cluster there
            raise MaiacError(f"--ray-address {address!r}: cannot connect: {err}") from None
        started = True
    actors: list[Any] = []
    keep = not started and cache is not None
    try:
        if keep and cache is not None and "ray_actors" in cache:
            actors = cache["ray_actors"]
        else:
            actor = _actor_class(ray)
            # a copy without the in-process interpreter cache (the actor builds its own)
            actors = [actor.remote(dataclasses.replace(p)) for p in programs]
            if keep and cache is not None:
                cache["ray_actors"] = actors
        ray.get([a.start.remote(inputs) for a in actors])
        while True:
            steps = [a.step.remote() for a in actors]
            found = ray.get([flag for flag, _ in steps])
            if not any(found):
                break
            if not all(found):
                raise MaiacError("chips disagree on the number of collectives")
            pieces = [src for _, src in steps]
            ray.get([a.finish.remote(*pieces) for a in actors])
        per_chip = ray.get([a.outputs.remote() for a in actors])
    except ray.exceptions.RayTaskError as err:
        keep = False
        cause = err.cause if getattr(err, "cause", None) is not None else err
        if isinstance(cause, MaiacError):
            raise cause from None
        raise MaiacError(f"a chip actor failed: {cause}") from None
    finally:
        if not keep:
            for a in actors:
                ray.kill(a)
            if cache is not None:
                cache.pop("ray_actors", None)
        if started:
            ray.shutdown()
    return merge_outputs(programs, per_chip)
