"""``--backend ray``: every simulated chip of a group is a Ray actor.

Each actor holds one chip's program (its shard of the weights) and its machine memory,
and runs it with runtime.multichip.ChipRunner up to each collective. At a collective
every actor returns its ``src`` block into Ray's object store; each actor then receives
the blocks of all chips as task arguments (Ray moves them actor to actor; the driver only
sees small flags) and computes its own ``dst`` — so a model whose weights do not fit one
host runs across the machines of a Ray cluster (``ray_address``, else ``$RAY_ADDRESS``),
or in a new local instance. A pipeline (``--pp``) runs stage after stage the same way; a
``send`` leaves its block in the object store and the matching ``recv``'s actor takes it as an
argument. Ray is an optional extra: ``pip install 'maiac[ray]'``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections import defaultdict, deque
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from maiac.runtime.errors import MachineError, MaiacError
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
        def step(self) -> tuple[tuple[str, int, int] | None, np.ndarray | None]:
            """Run to the next collective: ((its kind, rank, peer) or None at the end, this
            chip's src block). A ``send`` is done here (its block is the one sent); a
            ``recv`` waits for :meth:`receive`, any other collective for :meth:`finish`."""
            self.pending = ins = self.runner.run_to_collective()
            if ins is None:
                return None, None
            head = (ins.collective, ins.rank, ins.peer)
            if ins.collective == "send":
                return head, self.runner.send(ins)
            if ins.collective == "recv":
                return head, None
            return head, self.runner.collective_src(ins)

        def finish(self, *pieces: np.ndarray) -> None:
            self.runner.finish_collective(self.pending, pieces)

        def receive(self, block: np.ndarray) -> None:
            self.runner.receive(self.pending, block)

        def outputs(self) -> dict[str, np.ndarray]:
            return self.runner.outputs()

    return ChipActor


@contextlib.contextmanager
def _session(address: str | None) -> Iterator[tuple[Any, bool]]:
    """Ray, initialized here (and shut down at the end) unless the caller already did:
    (ray, whether this call started it)."""
    ray = _ray()
    started = False
    if not ray.is_initialized():
        # No address: RAY_ADDRESS if set, else a new local instance. ray.init(None) would
        # also join "the latest cluster started" (/tmp/ray/ray_current_cluster), which
        # may be another process's cluster that has since gone.
        address = address or os.environ.get("RAY_ADDRESS") or "local"
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        except Exception as err:  # a bad address, no cluster there
            raise MaiacError(f"--ray-address {address!r}: cannot connect: {err}") from None
        started = True
    try:
        yield ray, started
    finally:
        if started:
            ray.shutdown()


def _actor_error(ray: Any, err: Exception) -> MaiacError:
    cause = err.cause if getattr(err, "cause", None) is not None else err
    return cause if isinstance(cause, MaiacError) else MaiacError(f"a chip actor failed: {cause}")


def _step_stage(ray: Any, actors: Sequence[Any], channels: dict[tuple[int, int], deque[Any]],
                stage: int) -> bool:
    """Run a stage's chips to their next collective and through it; False at the end.

    Sent blocks stay in Ray's object store (``channels`` holds their references, the
    driver never fetches them); a receiving actor gets the block as a task argument."""
    from maiac.runtime.pipeline import take_sent

    steps = [a.step.remote() for a in actors]
    heads = ray.get([head for head, _ in steps])
    if all(h is None for h in heads):
        return False
    if any(h is None for h in heads) or len({h[0] for h in heads}) > 1:
        raise MachineError(f"stage {stage}: its chips disagree on the next collective")
    kind = heads[0][0]
    if kind == "send":
        for (_, rank, peer), (_, block) in zip(heads, steps, strict=True):
            channels[(rank, peer)].append(block)
    elif kind == "recv":
        ray.get([a.receive.remote(take_sent(channels, rank, peer, stage))
                 for a, (_, rank, peer) in zip(actors, heads, strict=True)])
    else:
        pieces = [block for _, block in steps]
        ray.get([a.finish.remote(*pieces) for a in actors])
    return True


def _load_actors(ray: Any, programs: Sequence[Program], cache: dict[str, Any] | None,
                 keep: bool) -> list[Any]:
    if keep and cache is not None and "ray_actors" in cache:
        return cache["ray_actors"]
    actor = _actor_class(ray)
    # a copy without the in-process interpreter cache (the actor builds its own)
    actors = [actor.remote(dataclasses.replace(p)) for p in programs]
    if keep and cache is not None:
        cache["ray_actors"] = actors
    return actors


def _run_stages(stages: Sequence[Sequence[Program]], inputs: dict[str, np.ndarray],
                address: str | None, cache: dict[str, Any] | None) -> dict[str, np.ndarray]:
    """Run stage after stage (each a tensor-parallel group of actors; one stage for
    ``--chips``); the union of their outputs.

    When Ray was already initialized by the caller, the actors (programs and machines
    loaded) stay alive in ``cache`` for the next run of the same group; a Ray this call
    starts is shut down again, actors and all.
    """
    from maiac.runtime.multichip import merge_outputs

    programs = [p for stage in stages for p in stage]
    with _session(address) as (ray, started):
        keep = not started and cache is not None
        actors: list[Any] = []
        try:
            actors = _load_actors(ray, programs, cache, keep)
            outputs: dict[str, np.ndarray] = {}
            channels: dict[tuple[int, int], deque[Any]] = defaultdict(deque)
            first = 0
            for s, stage in enumerate(stages):
                group = actors[first:first + len(stage)]
                first += len(stage)
                names = {spec.name for spec in stage[0].inputs}
                ray.get([a.start.remote({k: v for k, v in inputs.items() if k in names})
                         for a in group])
                while _step_stage(ray, group, channels, s):
                    pass
                outputs.update(merge_outputs(list(stage),
                                             ray.get([a.outputs.remote() for a in group])))
        except ray.exceptions.RayTaskError as err:
            keep = False
            raise _actor_error(ray, err) from None
        finally:
            if not keep:
                for a in actors:
                    ray.kill(a)
                if cache is not None:
                    cache.pop("ray_actors", None)
    return outputs


def run_on_ray(programs: Sequence[Program], inputs: dict[str, np.ndarray],
               address: str | None = None, cache: dict[str, Any] | None = None
               ) -> dict[str, np.ndarray]:
    """Run a tensor-parallel group with one Ray actor per chip; the group's outputs."""
    from maiac.runtime.multichip import check_group

    check_group(programs)
    return _run_stages([programs], inputs, address, cache)


def run_pipeline_on_ray(stages: Sequence[Sequence[Program]], inputs: dict[str, np.ndarray],
                        address: str | None = None, cache: dict[str, Any] | None = None
                        ) -> dict[str, np.ndarray]:
    """Run a pipeline (``--pp``, each stage optionally ``--chips`` wide) with one Ray
    actor per chip: activations go stage to stage as object references, actor to actor."""
    from maiac.runtime.pipeline import check_pipeline

    check_pipeline(stages)
    return _run_stages(stages, inputs, address, cache)
