"""`Bridge`: the facade of the in-training side. See DESIGN.md, "Bridge API".

The parts, each a module with one job: the *mailroom* thread admits command files (`mailroom`, `admission`) and
hands them over (`handoff`); in `step()`, the *applier* runs them at the step boundary (`applier`, through the
kinds table's behaviours in `effects`) and the *metric runner* runs the metrics (`runner`); the *registry* holds
hyperparameters and metrics (`registry`); the *recorder* writes journal, responses and state (`recorder`), and a
resumed run restores from its journal (`replay`). `parts.Parts` wires them and takes them down.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from bidviz import kinds

from . import effects
from .hparams import HParam, optimizer_hparams, type_name
from .metrics import compile_metric
from .parts import Parts
from .safetynet import NetOptions
from .snapshots import DEFAULT_BYTES, DEFAULT_COUNT


class Bridge:
    """Log-plus-control bridge for one run directory.

    On every rank of a torch.distributed job (detected, or given as `rank=`/`world=`), make one `Bridge` on the
    same run directory: rank 0 owns the mailbox, and every rank applies every command at the same step (see
    `ranks`). `dist_timeout` bounds how long the ranks wait for each other at a sync point.

    `step()` with nothing to do costs one increment and one comparison; admission, compiling and disk writes happen
    in the mailroom and recorder threads, and the slow path of `step()` only applies and runs metrics.

    The safety net (`safetynet`): `guard` pauses the run (`"stop"`: stops it; False: off) when the `loss` given to
    `step()` is NaN or infinite, or above `guard_spike` times its recent median; `snapshots` are taken before every
    hyperparameter change and on `snapshot`, kept in CPU memory within `snapshot_count` and `snapshot_bytes` (or
    spilled to `.bidviz/snapshots/` with `snapshot_spill`), and restored by `rewind`.

    `flush_secs`: the longest a logged value waits in memory before it reaches the event file (`parts.flush_cadence`:
    by default 0.1 s for a local run, so `bidviz serve` draws it within about 0.15 s, and 1 s on a store, where
    each flush is an upload). The writer's own thread flushes, never `step()`.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        writer: Any = None,
        namespace: Mapping[str, Any] | None = None,
        *,
        secret: str | None = None,
        resume: bool = True,
        poll_interval: float | None = None,
        hook_budget: float = 10.0,
        flush_secs: float | None = None,
        rank: int | None = None,
        world: int | None = None,
        dist_timeout: float = 300.0,
        guard: bool | str = True,
        guard_spike: float | None = None,
        snapshots: bool = True,
        snapshot_bytes: int = DEFAULT_BYTES,
        snapshot_count: int = DEFAULT_COUNT,
        snapshot_spill: bool = False,
    ) -> None:
        self._calls = 0
        self._next_check = 0
        self._prepare: Callable[[], Any] | None = None
        ref = weakref.ref(self)
        self._parts = parts = Parts(
            run_dir,
            writer,
            namespace,
            bridge=self,
            poke=lambda: _poke(ref),
            secret=secret,
            resume=resume,
            poll_interval=poll_interval,
            hook_budget=hook_budget,
            flush_secs=flush_secs,
            rank=rank,
            world=world,
            dist_timeout=dist_timeout,
            net=NetOptions(guard, guard_spike, snapshots, snapshot_bytes, snapshot_count, snapshot_spill),
        )  # raises after releasing whatever it took
        self.run_dir, self.mailbox, self.writer = parts.run_dir, parts.mailbox, parts.writer
        self.secret, self.hook_budget, self.flush_secs = parts.secret, hook_budget, parts.flush_secs
        self.namespace: dict[str, Any] = parts.namespace
        self.hparams: Mapping[str, Any] = parts.registry.view
        self._control = parts.control
        watch = parts.net.guard  # the divergence guard (the leader's): a finite float loss is checked in step()
        self._guarded, self._spiky = watch is not None, watch is not None and watch.spike is not None
        self._see = watch.see if watch is not None else None
        self._finalizer = weakref.finalize(self, parts.shutdown)

    # -- the loop ---------------------------------------------------------------------------------------------------

    def step(self, step: int | None = None, loss: Any = None, **context: Any) -> None:
        """Mark a step boundary: apply pending commands and run metrics. Nearly free when there is nothing to do.

        `loss` is a named parameter (not one of `context`) so that the divergence guard reads it without a lookup;
        metric code sees it as `loss` all the same (None: no loss this step)."""
        self._calls += 1
        # x - x is 0.0 (false) for every finite float and NaN (true) for NaN and both infinities
        if self._guarded and loss is not None and (loss.__class__ is not float or loss - loss or self._spiky):
            self._see(loss, self._calls - 1 if step is None else step)  # type: ignore[misc]
        if self._calls >= self._next_check:
            if loss is not None:
                context["loss"] = loss
            self._next_check = self._parts.slow_step(self._calls, step, context, self._prepare)

    @property
    def prepare(self) -> Callable[[], Any] | None:
        """Called in the training thread right before commands are applied or metrics run at a step: framework
        adapters use it to copy device-resident state back into framework objects (Keras on JAX)."""
        return self._prepare

    @prepare.setter
    def prepare(self, fn: Callable[[], Any] | None) -> None:
        self._prepare = fn
        self._parts.attend()  # the next step takes the whole slow path, which calls it (not `faststep`)

    @property
    def should_stop(self) -> bool:
        """True once a `stop` command was applied: leave the loop."""
        return self._control.should_stop

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        self._control.should_stop = bool(value)

    @property
    def paused(self) -> bool:
        return self._control.paused

    @property
    def closed(self) -> bool:
        return self._control.closed

    @property
    def steps_per_sec(self) -> float:
        return self._control.steps_per_sec

    @property
    def resumed_step(self) -> int | None:
        """On a resumed run, the last step its previous session reached (None on a new run): go on from the next."""
        return self._parts.resumed_step

    @property
    def rank(self) -> int:
        """This process's rank in a distributed job (0 for a single process)."""
        return self._parts.ranks.rank if self._parts.ranks is not None else 0

    # -- registration -----------------------------------------------------------------------------------------------

    def hparam(
        self,
        name: str,
        value: Any,
        *,
        type: str | None = None,
        min: float | None = None,
        max: float | None = None,
        choices: list[Any] | tuple[Any, ...] | None = None,
        on_change: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Register a tunable value; returns its current value (a value tuned earlier in this run, on resume)."""
        kinds.check_name(name, "hyperparameter name")
        hp = HParam(name, value, type or type_name(value), min, max, tuple(choices) if choices is not None else None)
        hp.value = hp.coerce(value)
        hp.on_change = on_change
        self._parts.registry.register(hp)
        return hp.current()

    def bind_optimizer(self, optimizer: Any, scheduler: Any = None, *, prefix: str = "") -> list[str]:
        """Register every numeric param-group value of a torch optimizer (`lr`, `momentum`, `betas`, ...).

        `prefix` names the values of a second optimizer apart (`prefix="opt1/"` gives `opt1/lr`); only an unprefixed
        optimizer becomes `optimizer` (and its scheduler `scheduler`) in metric code.
        """
        if prefix:
            kinds.check_name(prefix + "lr", "hyperparameter name")
        names = []
        for hp in optimizer_hparams(optimizer, scheduler):
            hp.name = prefix + hp.name
            self._parts.registry.register(hp, session=False)
            names.append(hp.name)
        self._parts.registry.write_session()
        safety = self._parts.net.safety
        if safety is not None:
            safety.track(optimizer, f"{prefix}optimizer")
            if scheduler is not None:
                safety.track(scheduler, f"{prefix}scheduler")
        if not prefix:
            self.namespace["optimizer"] = optimizer
            self.namespace["scheduler"] = scheduler
        return names

    def bind_hparam(
        self,
        name: str,
        get: Callable[[], Any],
        set: Callable[[Any], Any],
        *,
        type: str | None = None,
        min: float | None = None,
        max: float | None = None,
        choices: list[Any] | tuple[Any, ...] | None = None,
    ) -> Any:
        """Register a value that lives elsewhere (a framework's optimizer, a device array): `get()` reads it, `set(v)`
        writes it in the training thread. `set` may raise ProtocolError to refuse a value. Returns the current value."""
        kinds.check_name(name, "hyperparameter name")
        value = get()
        hp = HParam(name, value, type or type_name(value), min, max, tuple(choices) if choices else None)
        hp.apply, hp.read = set, get
        self._parts.registry.register(hp)
        return hp.current()

    def track(self, obj: Any, name: str | None = None) -> str:
        """Keep `obj` (anything with `state_dict`/`load_state_dict`: a module, a GradScaler, an EMA) in every
        snapshot, so a rewind restores it too; returns the name it is kept under. The namespace's `model` and bound
        optimizers and schedulers are kept without this."""
        if self._parts.net.safety is None:
            raise RuntimeError("this bridge keeps no snapshots (Bridge(snapshots=False)): nothing to track")
        return self._parts.net.safety.track(obj, name)

    def add_metric(
        self, name: str, code: str, every: int = 1, kind: str = "auto", replace: bool = False, guard: bool = False
    ) -> None:
        """Add a metric from code, as the `add_metric` command does (raises ProtocolError on bad code). With
        `guard=True` the divergence guard watches its values too."""
        args = kinds.ADD_METRIC.parse_args(
            {"name": name, "code": code, "every": every, "kind": kind, "replace": replace, "guard": guard}
        )
        registry = self._parts.registry
        with registry.lock:
            if name in registry.metrics and not replace:
                raise effects.metric_exists(name)
            registry.install(args, compile_metric(name, code), sender="api")
        if self._parts.net.guard is not None:
            self._parts.net.guard.watch(name, guard)

    def enable_diagnostics(self, every: int = 1) -> list[str]:
        """Switch on the built-in diagnostics pack (grad/weight norms, update ratio, lr, steps/s)."""
        kinds.ADD_DIAGNOSTICS.parse_args({"every": every})
        return effects.install_pack_now(self._parts.registry, every, "api")

    # -- state and the end --------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What `state.json` holds: a snapshot safe to take from any thread."""
        return self._parts.snapshot()

    def close(self) -> None:
        """Stop watching, answer commands that will never be applied, flush and release the run. Idempotent."""
        self._finalizer()

    def __enter__(self) -> Bridge:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _poke(ref: weakref.ReferenceType[Bridge]) -> None:
    """Have the next `step()` take the slow path (a command arrived, a metric changed, the loop is slow)."""
    bridge = ref()
    if bridge is not None:
        bridge._next_check = 0
