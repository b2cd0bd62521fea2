"""Metric hooks in a real training process, read back with TensorBoard's own loader."""

from __future__ import annotations

import math

import pytest
from bridge_helpers import Trainer, journal_commands, load_events, scalars


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    t = Trainer(tmp_path_factory.mktemp("metrics") / "run", "--budget", "1.0")
    yield t
    t.kill()


def metric_state(trainer, name, predicate, what):
    return trainer.wait_for(lambda s: name in s["metrics"] and predicate(s["metrics"][name]), what=what)["metrics"][
        name
    ]


def test_expression_metric_is_written_as_a_scalar_series_within_a_second_or_so(trainer):
    resp = trainer.call("add_metric", name="loss_x2", code="loss * 2")
    assert resp["status"] == "applied" and resp["result"]["tag"] == "bidviz/loss_x2"
    m = metric_state(trainer, "loss_x2", lambda m: len(m["recent"]) >= 3, "three values")
    assert m["status"] == "running" and m["error_count"] == 0
    loss = trainer.call("eval", code="float(loss)")["result"]
    assert m["last_value"] == pytest.approx(2 * loss, rel=0.5)
    # Flushed while training goes on: the series is in the event file without closing anything.
    trainer.wait_for(lambda s: len(scalars(trainer.run_dir, "bidviz/loss_x2")) >= 3, timeout=5, what="flushed")


def test_function_body_metric_with_every(trainer):
    code = "w = model[0].weight\nif step < 0:\n    return None\nreturn {'mean': w.mean(), 'max': w.max()}"
    assert trainer.call("add_metric", name="w", code=code, every=5)["status"] == "applied"
    m = metric_state(trainer, "w", lambda m: len(m["recent"]) >= 2, "two values")
    steps = [s for s, _ in m["recent"]]
    assert all(s % 5 == 0 for s in steps)
    assert set(m["last_value"]) == {"mean", "max"}
    trainer.wait_for(lambda s: len(scalars(trainer.run_dir, "bidviz/w/max")) >= 2, timeout=5, what="dict series")


def test_histogram_text_and_image_kinds(trainer):
    assert trainer.call("add_metric", name="weights", code="model[0].weight")["status"] == "applied"
    assert trainer.call("add_metric", name="note", code="f'step {step}'", every=10)["status"] == "applied"
    assert (
        trainer.call("add_metric", name="pixels", code="model[0].weight", kind="image", every=10)["status"] == "applied"
    )
    for name in ("weights", "note", "pixels"):
        metric_state(trainer, name, lambda m: m["last_value"] is not None and m["last_step"] is not None, name)

    def written(_state):
        acc = load_events(trainer.run_dir)
        tags = acc.Tags()
        return (
            "bidviz/weights" in tags["histograms"]
            and "bidviz/pixels" in tags["images"]
            and any(t.startswith("bidviz/note") for t in tags["tensors"])
        )

    trainer.wait_for(written, timeout=10, what="histogram, image and text in the event file")
    acc = load_events(trainer.run_dir)
    hist = acc.Histograms("bidviz/weights")[-1].histogram_value
    assert hist.num == 32 and hist.min < hist.max
    image = acc.Images("bidviz/pixels")[-1]
    assert (image.width, image.height) == (4, 8)
    text_tag = next(t for t in acc.Tags()["tensors"] if t.startswith("bidviz/note"))
    assert acc.Tensors(text_tag)[-1].tensor_proto.string_val[0].decode().startswith("step ")


def test_a_metric_that_fails_at_its_first_run_is_added_paused_with_that_error(trainer):
    code = "x = 1\ny = x / 0\nreturn y"
    resp = trainer.call("add_metric", name="broken", code=code)
    assert resp["status"] == "applied"
    first = resp["result"]["first_error"]
    assert resp["result"]["status"] == "paused" and first["type"] == "ZeroDivisionError" and first["line"] == 2
    assert 'File "<metric broken>", line 2' in first["traceback"]
    m = metric_state(trainer, "broken", lambda m: m["status"] == "paused", "paused")
    assert m["error_count"] == 0 and m["last_error"]["type"] == "ZeroDivisionError"
    ok = trainer.call("add_metric", name="fine", code="float(step) + 0.5")
    assert ok["result"]["first_value"] == ok["step"] + 0.5 and "first_error" not in ok["result"]


def test_raising_metric_reports_traceback_and_is_disabled_after_five_in_a_row(trainer):
    code = "x = 1\ny = x / 0\nreturn y"
    assert trainer.call("add_metric", name="broken5", code=code)["result"]["status"] == "paused"
    assert trainer.call("resume_metric", name="broken5")["status"] == "applied"
    m = metric_state(trainer, "broken5", lambda m: m["status"] == "disabled", "disabled")
    assert m["error_count"] == 5
    err = m["last_error"]
    assert err["type"] == "ZeroDivisionError" and err["line"] == 2
    assert 'File "<metric broken5>", line 2' in err["traceback"]
    # The journal has the first error and the one that disabled it (with its count), not one line per step.
    events = [e for e in trainer.mailbox.iter_journal() if e.get("metric") == "broken5"]
    assert [e["event"] for e in events] == ["metric_error", "metric_error", "metric_disabled"]
    assert "count" not in events[0] and events[1]["count"] == 5
    before = trainer.state()["step"]
    trainer.wait_for(lambda s: s["step"] > before + 5, what="training goes on")


def test_errors_not_in_a_row_keep_the_metric_alive_and_are_journaled_once_per_type_then_by_tens(trainer):
    # Fails on every third run (its first run, on a scratch state, succeeds).
    code = "state['n'] = state.get('n', 0) + 1\nreturn 1 / (state['n'] % 3)"
    assert trainer.call("add_metric", name="flaky", code=code)["result"]["first_value"] == 1.0
    m = metric_state(trainer, "flaky", lambda m: m["error_count"] >= 12, "twelve errors")
    assert m["status"] == "running" and m["errors_in_row"] <= 1
    lines = [e for e in trainer.mailbox.iter_journal() if e.get("metric") == "flaky"]
    assert [e.get("count") for e in lines] == [None, 10], lines
    assert lines[1]["reason"].startswith("ZeroDivisionError 10 times so far, the last at step ")


def test_nan_metric_is_written_as_nan(trainer):
    assert trainer.call("add_metric", name="nan", code="float('nan')")["status"] == "applied"
    m = metric_state(trainer, "nan", lambda m: m["last_value"] is not None, "a value")
    assert m["last_value"] == "NaN" and m["error_count"] == 0
    trainer.wait_for(lambda s: len(scalars(trainer.run_dir, "bidviz/nan")) >= 1, timeout=5, what="nan written")
    assert all(math.isnan(v) for _, v in scalars(trainer.run_dir, "bidviz/nan"))


def test_endless_metric_is_interrupted_disabled_and_training_goes_on(trainer):
    first = trainer.call("add_metric", name="forever", code="while True:\n    pass")["result"]["first_error"]
    assert first["type"] == "MetricTimeout" and "1 s budget" in first["message"]  # its check was interrupted
    assert trainer.call("resume_metric", name="forever")["status"] == "applied"
    m = metric_state(trainer, "forever", lambda m: m["status"] == "disabled", "disabled by the time budget")
    assert m["last_error"]["type"] == "MetricTimeout" and "1 s budget" in m["last_error"]["message"]
    before = trainer.state()["step"]
    trainer.wait_for(lambda s: s["step"] > before + 5, what="training goes on")
    assert trainer.call("eval", code="1 + 1")["result"] == 2


def test_wrong_explicit_kind_is_a_runtime_error_of_that_metric(trainer):
    # Its first run (the check at install) already tells; resumed, each run fails the same way.
    first = trainer.call("add_metric", name="img3", code="torch.zeros(2, 2, 2, 2)", kind="image")["result"]
    assert first["first_error"]["type"] == "TypeError" and "2-D" in first["first_error"]["message"]
    assert trainer.call("resume_metric", name="img3")["status"] == "applied"
    m = metric_state(trainer, "img3", lambda m: m["error_count"] >= 1, "an error")
    assert m["last_error"]["type"] == "TypeError" and "2-D" in m["last_error"]["message"]
    first = trainer.call("add_metric", name="obj", code="object()")["result"]
    assert "a metric must return a number" in first["first_error"]["message"]


def test_pause_resume_replace_remove(trainer):
    assert trainer.call("add_metric", name="c", code="1.0")["status"] == "applied"
    metric_state(trainer, "c", lambda m: m["last_value"] == 1.0, "first value")
    assert trainer.call("add_metric", name="c", code="2.0")["error"]["type"] == "NameTaken"
    assert trainer.call("pause_metric", name="c")["result"]["status"] == "paused"
    assert trainer.call("add_metric", name="c", code="2.0", replace=True)["status"] == "applied"
    metric_state(trainer, "c", lambda m: m["last_value"] == 2.0, "replaced code runs")
    assert trainer.call("remove_metric", name="c")["status"] == "applied"
    trainer.wait_for(lambda s: "c" not in s["metrics"], what="removed")
    cid = trainer.send("resume_metric", name="c")
    assert trainer.mailbox.wait_response(cid, 20)["error"]["type"] == "UnknownName"
    assert len(journal_commands(trainer.mailbox, cid)) == 1


def test_metrics_share_the_terminal_namespace(trainer):
    assert trainer.call("eval", code="def double(t):\n    return t * 2")["status"] == "applied"
    assert trainer.call("add_metric", name="dbl", code="double(loss)")["status"] == "applied"
    m = metric_state(trainer, "dbl", lambda m: m["last_value"] is not None, "a value")
    assert m["error_count"] == 0


def test_diagnostics_pack(trainer):
    resp = trainer.call("add_diagnostics", every=2)
    assert resp["status"] == "applied"
    names = resp["result"]
    assert set(names) == {"diag/grad_norm", "diag/weight_norm", "diag/update_ratio", "diag/lr", "diag/steps_per_sec"}
    state = trainer.wait_for(
        lambda s: all(s["metrics"].get(n, {}).get("last_value") is not None for n in names), what="diagnostics"
    )
    for n in names:
        assert state["metrics"][n]["error_count"] == 0, state["metrics"][n]["last_error"]
    assert state["metrics"]["diag/lr"]["last_value"] == pytest.approx(state["hparams"]["lr"]["value"])
    assert state["metrics"]["diag/grad_norm"]["last_value"] > 0
    assert 0 < state["metrics"]["diag/update_ratio"]["last_value"] < 1


def test_a_body_may_rebind_a_name_of_the_step(trainer):
    assert trainer.call("add_metric", name="plus2", code="float(loss) + 2")["status"] == "applied"
    code = "loss = float(loss)\nfor i in range(2):\n    loss = loss + 1\nreturn loss"
    assert trainer.call("add_metric", name="rebind", code=code)["status"] == "applied"
    state = trainer.wait_for(
        lambda s: (
            len(s["metrics"].get("rebind", {}).get("recent", [])) >= 3
            or s["metrics"].get("rebind", {}).get("error_count")
        ),
        what="values",
    )
    rebind, plus2 = state["metrics"]["rebind"], dict(map(tuple, state["metrics"]["plus2"]["recent"]))
    assert rebind["error_count"] == 0, rebind["last_error"]
    for step, value in rebind["recent"]:
        assert value == pytest.approx(plus2[step]), "same step, same loss: the step's loss was read, then rebound"
