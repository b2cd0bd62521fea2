"""The fast step (`bridge/faststep.py`, issue 12): while a loop's only work is its metrics, `bridge.step` is one
function that runs them inline. It must do exactly what the general way does, whatever the metrics raise, whoever
kept which `step` function, from whichever thread. Real Bridge, real event files read back, real threads.

Every test here runs twice: with the C step (`bridge/_faststep.c`, built at install) and with faststep.py's own
(BIDVIZ_FASTSTEP=python, what runs where no compiler was)."""

from __future__ import annotations

import threading
import time

import pytest

from bidviz.bridge import Bridge, faststep
from bidviz.bridge.metrics import ERRORS_TO_DISABLE
from bidviz.writers import read_scalars


@pytest.fixture(autouse=True, params=["native", "python"])
def implementation(request, monkeypatch):
    """Which fast step `faststep.build` makes in this test (read at each build, by the bridges made here)."""
    monkeypatch.setenv("BIDVIZ_FASTSTEP", request.param)
    if request.param == "native":
        assert faststep.NativeStep is not None, "the C fast step (bridge/_faststep.c) was not built at install"
        assert faststep.native()
    else:
        assert not faststep.native()
    return request.param


def _is_native(fn):
    return faststep.NativeStep is not None and isinstance(fn, faststep.NativeStep)


METRICS = {
    "double": "loss * 2",
    "pair": "{'a': loss, 'b': float(step)}",
    "odd": "None if step % 2 else step * 1.0",  # no value at odd steps
    "count": "state['n'] = state.get('n', 0) + 1\nreturn float(state['n'])",
}


def _series(run):
    return {tag: [(s, v) for s, _, v in points] for tag, points in read_scalars(run).items()}


def _train(bridge, steps):
    for i in range(steps):
        bridge.step(loss=1.0 / (i + 1))  # step=None: the bridge counts


def test_the_fast_step_writes_what_the_general_way_writes(tmp_path, implementation):
    """Two runs of the same loop and metrics: one where the fast step takes over, one kept on the general way (a
    `prepare` is set): the same series, point for point, and the same state."""
    runs = {}
    for name in ("fast", "general"):
        with Bridge(tmp_path / name) as bridge:
            if name == "general":
                bridge.prepare = lambda: None
            for metric, code in METRICS.items():
                bridge.add_metric(metric, code)
            _train(bridge, 400)
            assert ("step" in vars(bridge)) is (name == "fast"), "the fast step is the instance's own step"
            if name == "fast":
                assert _is_native(vars(bridge)["step"]) is (implementation == "native")
            state = bridge.state()
        runs[name] = (_series(tmp_path / name), state)
    (fast, fast_state), (general, general_state) = runs["fast"], runs["general"]
    assert fast == general
    assert [s for s, _ in fast["bidviz/double"]] == list(range(400))
    assert fast["bidviz/double"][399] == (399, pytest.approx(2.0 / 400, rel=1e-6))  # float32 in the file
    assert [s for s, _ in fast["bidviz/odd"]] == list(range(0, 400, 2))
    assert fast["bidviz/count"][-1] == (399, 400.0)
    for metric in METRICS:
        assert fast_state["metrics"][metric]["recent"] == general_state["metrics"][metric]["recent"], metric
        assert fast_state["metrics"][metric]["error_count"] == 0
    assert fast_state["step"] == general_state["step"] == 399


@pytest.mark.parametrize(
    "raised",
    ["SystemExit(3)", "KeyboardInterrupt()", "GeneratorExit()", "type('Odd', (BaseException,), {})()", "1 / 0"],
)
def test_anything_a_metric_raises_in_the_fast_step_is_its_own_failure(tmp_path, raised):
    """A metric that passes its first run and then raises (BaseExceptions too) at every step from step 50: training
    goes on, it is disabled after ERRORS_TO_DISABLE in a row, and the metrics before and after it in the same batch
    write every step."""
    code = f"if step >= 50:\n    raise {raised}\nreturn loss" if raised != "1 / 0" else "loss if step < 50 else 1 / 0"
    with Bridge(tmp_path / "run") as bridge:
        bridge.add_metric("before", "loss + 1")
        bridge.add_metric("bad", code)
        bridge.add_metric("after", "loss - 1")
        for i in range(120):
            bridge.step(i, loss=float(i))  # anything escaping the batch would raise here
            if i == 40:
                assert "step" in vars(bridge), "the fast step runs these metrics"
        bad = bridge.state()["metrics"]["bad"]
    assert bad["status"] == "disabled"
    assert bad["error_count"] == ERRORS_TO_DISABLE
    assert bad["last_error"]["step"] == 50 + ERRORS_TO_DISABLE - 1
    series = _series(tmp_path / "run")
    assert series["bidviz/before"] == [(i, i + 1.0) for i in range(120)]
    assert series["bidviz/after"] == [(i, i - 1.0) for i in range(120)]
    assert series["bidviz/bad"] == [(i, float(i)) for i in range(50)]


def test_step_functions_kept_from_before_count_the_same_steps(tmp_path):
    """A loop may keep `bridge.step` in a variable: the class's method (kept before any metric), the fast step (kept
    while it ran), both still right after the metric set changed, interleaved: each call is one step, counted once."""
    with Bridge(tmp_path / "run") as bridge:
        general = bridge.step  # the class's own, bound: no metric yet
        bridge.add_metric("a", "float(step)")
        for _ in range(30):
            bridge.step()
        fast = bridge.step
        assert fast != general and "step" in vars(bridge)
        bridge.add_metric("a", "float(step) * 10", replace=True)  # a new metric set: the kept fast step is stale
        bridge.add_metric("b", "float(step)")
        callers = [general, fast, bridge.step]
        for i in range(300):
            callers[i % 3]()
        bridge.add_metric("b", "float(step) + 0.5", replace=True)
        for i in range(30):
            callers[i % 3]()
    series = _series(tmp_path / "run")
    a = series["bidviz/a"]
    assert [s for s, _ in a] == list(range(360)), "every call one step, none twice, none lost"
    assert a[:30] == [(s, float(s)) for s in range(30)]
    assert a[30:] == [(s, s * 10.0) for s in range(30, 360)]
    assert series["bidviz/b"] == [(s, float(s)) for s in range(30, 330)] + [(s, s + 0.5) for s in range(330, 360)]


def test_a_hook_run_from_another_thread_is_interrupted_in_that_thread(tmp_path):
    """The fast step ran in the main thread; then the loop goes on in another one, where a metric never returns.
    The interrupt must land in that thread (the main thread, waiting in join, must never get it), the metric be
    disabled as timed out, and the other metric go on writing."""
    stubborn = (
        "import threading\n"
        "if threading.current_thread().name == 'other':\n"
        "    while True:\n"
        "        try:\n"
        "            sum(range(1000))\n"
        "        except Exception:\n"
        "            pass\n"
        "return loss"
    )
    with Bridge(tmp_path / "run", hook_budget=0.3) as bridge:
        bridge.add_metric("stubborn", stubborn)
        bridge.add_metric("plain", "loss * 3")
        for i in range(50):
            bridge.step(i, loss=1.0)
        assert "step" in vars(bridge)
        errors = []

        def other():
            try:
                for i in range(50, 60):
                    bridge.step(i, loss=2.0)
            except BaseException as e:  # noqa: BLE001 - anything here fails the test below
                errors.append(e)

        thread = threading.Thread(target=other, name="other")
        t0 = time.monotonic()
        thread.start()
        thread.join(30)  # an interrupt sent to the wrong thread would raise here
        assert not thread.is_alive() and not errors, errors
        assert time.monotonic() - t0 < 10
        for i in range(60, 80):
            bridge.step(i, loss=3.0)
        metric = bridge.state()["metrics"]["stubborn"]
    assert metric["status"] == "disabled" and metric["last_error"]["type"] == "MetricTimeout"
    plain = _series(tmp_path / "run")["bidviz/plain"]
    expected = [(i, 3.0) for i in range(50)] + [(i, 6.0) for i in range(50, 60)] + [(i, 9.0) for i in range(60, 80)]
    assert plain == expected


def test_a_prepare_set_while_the_fast_step_runs_is_called_before_every_later_step(tmp_path):
    calls = []
    with Bridge(tmp_path / "run") as bridge:
        bridge.add_metric("seen", "float(prepared)")
        bridge.namespace["prepared"] = -1
        for i in range(40):
            bridge.step(i)
        assert "step" in vars(bridge)

        def prepare():
            calls.append(1)
            bridge.namespace["prepared"] = len(calls)

        bridge.prepare = prepare
        for i in range(40, 100):
            bridge.step(i)
    assert len(calls) == 60
    assert _series(tmp_path / "run")["bidviz/seen"][39:] == [(39, -1.0)] + [(i, i - 39.0) for i in range(40, 100)]


def test_a_nan_loss_in_the_fast_step_stops_training_at_that_step(tmp_path):
    with Bridge(tmp_path / "run", guard="stop") as bridge:
        bridge.add_metric("loss_seen", "loss")
        last = None
        for i in range(1000):
            loss = float("nan") if i == 77 else 1.0
            bridge.step(i, loss=loss)
            last = i
            if bridge.should_stop:
                break
        assert last == 77
        assert "step" in vars(bridge), "the fast step ran the metric up to the stop"
    points = _series(tmp_path / "run")["bidviz/loss_seen"]
    assert [s for s, _ in points] == list(range(78))


def test_an_error_whose_description_never_ends_is_cut_at_the_budget(tmp_path):
    """Describing what a metric raised calls its __str__, user code too: one that loops for ever is interrupted at
    the hook budget, the failure still counted, and training goes on."""
    code = (
        "class Endless(Exception):\n"
        "    def __str__(self):\n"
        "        while True:\n"
        "            pass\n"
        "if step >= 20:\n"
        "    raise Endless()\n"
        "return loss"
    )
    with Bridge(tmp_path / "run", hook_budget=0.3) as bridge:
        bridge.add_metric("endless", code)
        bridge.add_metric("plain", "loss")
        t0 = time.monotonic()
        for i in range(40):
            bridge.step(i, loss=1.0)
        elapsed = time.monotonic() - t0
        metric = bridge.state()["metrics"]["endless"]
    assert metric["status"] == "disabled" and metric["error_count"] == ERRORS_TO_DISABLE
    assert metric["last_error"]["type"] == "Endless"
    assert "could not be described" in metric["last_error"]["message"]
    assert elapsed < 0.3 * ERRORS_TO_DISABLE * 4
    assert [s for s, _ in _series(tmp_path / "run")["bidviz/plain"]] == list(range(40))


def test_a_forgotten_bridge_with_the_fast_step_is_closed_when_its_last_reference_goes(tmp_path):
    """The fast step holds the bridge's attributes, not the bridge: no cycle keeps a forgotten bridge (and its
    ownership of the run) alive until a garbage collection that may never come."""
    import gc

    gc.disable()
    try:
        bridge = Bridge(tmp_path / "run")
        bridge.add_metric("m", "loss")
        for i in range(200):
            bridge.step(i, loss=1.0)
        assert "step" in vars(bridge)
        parts = bridge._parts
        del bridge
        assert parts.control.closed
        with Bridge(tmp_path / "run") as again:  # the run is free for a new bridge at once
            again.step(0)
    finally:
        gc.enable()
