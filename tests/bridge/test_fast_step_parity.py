"""The C fast step (`bridge/_faststep.c`) against faststep.py's, as an attacker calls them: the same calls, odd and
hostile ones included, give the same event files, the same state and the same errors from both, and neither lets
anything escape into the loop that the other would not. Real Bridges, event files read back."""

from __future__ import annotations

import gc
import math
import weakref

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bidviz.bridge import Bridge, faststep
from bidviz.writers import read_scalars

pytestmark = pytest.mark.skipif(faststep.NativeStep is None, reason="needs the C fast step")

# Metrics whose values take every way of the fast step: a float written straight through, None (no point), a dict
# and an int (`emit`), a float subclass (not a float to the fast step), a failure from a given step on.
METRICS = {
    "plain": "loss * 2",
    "none": "None if step % 3 else float(step)",
    "pair": "{'a': float(step), 'b': loss}",
    "int": "int(step) * 2",
    "sub": "type('F', (float,), {})(loss)",
    "late": "1 / 0 if step >= 40 else loss",
    "ctx": "float(extra) if 'extra' in globals() else -1.0",
}


def _run(root, monkeypatch, which, calls, metrics=METRICS, **options):
    """Run `calls` (each (args, kwargs) for `bridge.step`) on a fresh bridge with the `which` fast step; returns what
    a user sees: the series read back, each metric's state, and what each call raised (type name, or None)."""
    monkeypatch.setenv("BIDVIZ_FASTSTEP", which)
    raised = []
    with Bridge(root / which, **options) as bridge:
        for name, code in metrics.items():
            bridge.add_metric(name, code)
        for args, kwargs in calls:
            try:
                bridge.step(*args, **kwargs)
                raised.append(None)
            except Exception as e:  # noqa: BLE001 - compared between the two steps
                raised.append((type(e).__name__, str(e).split("step() ")[-1]))  # the function's name differs
        kind = type(vars(bridge).get("step"))
        state = bridge.state() | {"should_stop": bridge.should_stop}
    series = {tag: [(s, v) for s, _, v in points] for tag, points in read_scalars(root / which).items()}
    kept = {
        name: {k: m[k] for k in ("status", "error_count", "recent")} | {"error": (m["last_error"] or {}).get("type")}
        for name, m in state["metrics"].items()
    }
    return series, kept, raised, kind, (state["step"], state["should_stop"])


def _both(tmp_path, monkeypatch, calls, metrics=METRICS, **options):
    native = _run(tmp_path, monkeypatch, "native", calls, metrics, **options)
    python = _run(tmp_path, monkeypatch, "python", calls, metrics, **options)
    assert native[3] is faststep.NativeStep, "the C step ran these calls"
    assert python[3] is not faststep.NativeStep
    return native, python


def _same(a, b):
    """Equal, NaN equal to NaN (a NaN loss is a point like any other)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def test_odd_calls_give_the_same_files_state_and_errors(tmp_path, monkeypatch):
    """Positional loss, keywords in any order, extra context, steps the writer refuses (past int64, negative, a
    string), a bool and a float step, too many arguments, a step given twice: what each call raises, the series and
    the state are the same with both steps, and a refused step is the metrics' failure, not the loop's."""
    warm = [((i,), {"loss": 1.0 / (i + 1)}) for i in range(30)]
    odd = [
        ((30, 0.5), {}),  # loss given by position
        ((), {"loss": 0.25, "step": 31}),
        ((32,), {"loss": 0.5, "extra": 7}),  # context: visible to the metrics
        ((33,), {"extra": "8"}),
        ((2**70,), {"loss": 0.5}),  # past int64: the writer refuses it
        ((-5,), {"loss": 0.5}),
        (("36",), {"loss": 0.5}),
        ((True,), {"loss": 0.5}),
        ((38.0,), {"loss": 0.5}),
        ((39, 0.5, 3), {}),  # three positional arguments: TypeError, nothing counted
        ((39,), {"step": 40}),  # step twice: TypeError
        ((), {**{"odd name": 1.0}, "loss": 0.5}),  # a keyword no Python name could be
    ]
    after = [((i,), {"loss": 0.5}) for i in range(40, 80)]
    native, python = _both(tmp_path, monkeypatch, warm + odd + after)
    assert _same(native[:3], python[:3])
    assert native[4] == python[4] == (79, False)
    raised = native[2][30:42]
    assert [r and r[0] for r in raised] == [None] * 9 + ["TypeError", "TypeError", None]
    assert "3 were given" in raised[9][1] and "multiple values for argument 'step'" in raised[10][1]
    series, kept = native[0], native[1]
    assert (2**70, 1.0) not in series["bidviz/plain"]
    assert kept["late"]["status"] == "disabled", "a metric raising at every step is disabled, as before"
    assert series["bidviz/ctx"][32 - 0][1] == 7.0


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(0, 2**22), st.integers(-(2**65), 2**65)),
            st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5)),
            st.booleans(),
        ),
        min_size=1,
        max_size=60,
    )
)
def test_any_sequence_of_steps_and_losses_gives_the_same_result(tmp_path_factory, monkeypatch, steps):
    """Random steps (None: the bridge counts; huge and negative ones), losses (NaN, infinities, ints, None) and
    context, after a warm-up that installs the fast step: the same series, state and errors from both steps. The
    divergence guard watches every loss (a spike limit: even finite floats go to it) and stops the run (rather than
    pause it, which would wait here for a resume) at the first NaN or infinity."""
    root = tmp_path_factory.mktemp("parity")
    calls = [((i,), {"loss": 0.5}) for i in range(20)]
    for step, loss, extra in steps:
        kwargs = {"loss": loss} if loss is not None else {}
        if extra:
            kwargs["extra"] = 1
        calls.append(((step,) if step is not None else (), kwargs))
    native, python = _both(root, monkeypatch, calls, guard="stop", guard_spike=1e6)
    assert _same(native[:3], python[:3]) and native[4] == python[4]


def test_a_metric_that_steps_the_bridge_from_inside_itself_fails_alone(tmp_path, monkeypatch):
    """Metric code that calls `bridge.step()` from inside its own run, without end: the recursion is the metric's
    failure (RecursionError), not a crash of the process, and the same with both steps."""
    metrics = {"plain": "loss * 2", "again": "b.step(loss=1.0)\nreturn 1.0"}
    results = {}
    for which in ("native", "python"):
        monkeypatch.setenv("BIDVIZ_FASTSTEP", which)
        with Bridge(tmp_path / which) as bridge:
            bridge.namespace["b"] = bridge
            bridge.add_metric("plain", metrics["plain"])
            for i in range(20):
                bridge.step(i, loss=1.0)
            bridge.add_metric("again", metrics["again"])
            for i in range(20, 40):
                bridge.step(i, loss=1.0)  # anything escaping the metric would raise here
            assert isinstance(vars(bridge)["step"], faststep.NativeStep) is (which == "native")
            state = bridge.state()
        results[which] = state
        again = state["metrics"]["again"]
        assert state["metrics"]["plain"]["status"] == "running" and state["metrics"]["plain"]["error_count"] == 0
        assert again["error_count"] > 0 and again["last_error"]["type"] == "RecursionError", again
        # the nested steps are steps too: the count is past the loop's own (how far depends on the frames a level
        # takes, one fewer with the C step)
        assert state["step"] > 39
    assert results["native"]["metrics"]["again"]["status"] == results["python"]["metrics"]["again"]["status"]


def test_a_forgotten_bridge_and_its_c_step_are_collected(tmp_path, monkeypatch):
    """The step holds the bridge's `__dict__` and its parts, and the `__dict__` holds the step: a cycle only the
    garbage collector can free, which it can only if the C step tells it what it holds (tp_traverse)."""
    monkeypatch.setenv("BIDVIZ_FASTSTEP", "native")
    bridge = Bridge(tmp_path / "run")
    bridge.add_metric("m", "loss")
    for i in range(50):
        bridge.step(i, loss=1.0)
    step = vars(bridge)["step"]
    assert isinstance(step, faststep.NativeStep)
    parts = weakref.ref(bridge._parts)
    ns = weakref.ref(type("Probe", (), {})())  # a control: a plain object freed at once
    bridge.namespace["probe"] = keep = type("Probe", (), {})()
    probe = weakref.ref(keep)
    del bridge, step, keep
    gc.collect()
    assert ns() is None
    assert parts() is None, "the bridge's parts outlived it: the C step keeps them in an uncollectable cycle"
    assert probe() is None, "the metrics' namespace outlived the bridge"


class _OwnWriter:
    """A user's own writer with the narrowest `add_scalar` the Writer protocol allows: (tag, value, step), no
    walltime. It keeps what it was given."""

    run_dir = None

    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def add_histogram(self, tag, values, step):
        pass

    def add_text(self, tag, text, step):
        pass

    def add_image(self, tag, array, step, dataformats):
        pass

    def add_hparams_session(self, hparams, metric_tags):
        pass

    def flush(self):
        pass

    def close(self):
        pass


def test_a_users_own_writer_gets_the_calls_it_declared(tmp_path, monkeypatch):
    """The fast step calls a metric's writer as faststep.py does, `write(value, step)`: a writer whose `add_scalar`
    takes no walltime gets every point, from both steps, and no metric fails."""
    got = {}
    for which in ("native", "python"):
        monkeypatch.setenv("BIDVIZ_FASTSTEP", which)
        writer = _OwnWriter()
        with Bridge(tmp_path / which, writer=writer) as bridge:
            bridge.add_metric("double", "loss * 2")
            for i in range(200):
                bridge.step(i, loss=float(i))
            assert isinstance(vars(bridge)["step"], faststep.NativeStep) is (which == "native")
            metric = bridge.state()["metrics"]["double"]
        assert metric["status"] == "running" and metric["error_count"] == 0, metric["last_error"]
        got[which] = writer.scalars
    assert got["native"] == got["python"]
    assert [(s, v) for tag, v, s in got["native"] if tag == "bidviz/double"] == [(i, 2.0 * i) for i in range(200)]
