"""The tab's atomic changes and first-run checks, in headless Chromium against stock TensorBoard and a real training
process: "Apply all" sets edited rows as one command (all at one step, or none, each refusal named on its row), and
an added metric's first run shows its value, or its error with the user's line on the row and in the add form."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from tab_support import wait_for
from test_plugin_browser import TIMEOUT_MS, browser, page, state_of, tab  # noqa: F401 - fixtures

from bidviz import kinds
from bidviz.writers import read_scalars


def _journal(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / ".bidviz" / "journal.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _last_change(run_dir: Path, name: str) -> dict[str, Any]:
    return state_of(run_dir)["hparams"][name]["changes"][-1]  # type: ignore[no-any-return]


def test_apply_all_sets_edited_rows_at_one_step_or_none(
    tmp_path: Path,
    start_training: Any,
    start_tensorboard: Any,
    page: Any,  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    run_dir = tmp_path / "logs" / "exp"
    start_training(run_dir)
    ui = tab(page, start_tensorboard(tmp_path / "logs").url)
    expect(ui.get_by_test_id("run-status")).to_have_text("live")
    expect(ui.get_by_test_id("hparam-value-dropout")).to_have_text("0.1")
    apply_all = ui.get_by_test_id("hparam-apply-all")
    expect(apply_all).to_be_disabled()  # nothing edited yet

    # Two edited rows, one command: both change at the same step, in state.json and in the event files.
    ui.get_by_test_id("hparam-input-lr").fill("0.02")
    ui.get_by_test_id("hparam-input-dropout").fill("0.3")
    expect(apply_all).to_have_text("Apply all (2)")
    apply_all.click()
    expect(ui.get_by_test_id("hparam-value-lr")).to_have_text("0.02")
    expect(ui.get_by_test_id("hparam-value-dropout")).to_have_text("0.3")
    expect(ui.get_by_test_id("hparam-apply-all-status")).to_contain_text("lr, dropout set together at step")
    expect(ui.get_by_test_id("hparam-error-lr")).to_contain_text("set to 0.02 (was 0.1) at step")
    lr, dropout = _last_change(run_dir, "lr"), _last_change(run_dir, "dropout")
    assert lr["value"] == 0.02 and dropout["value"] == 0.3
    assert lr["step"] == dropout["step"], (lr, dropout)
    step = lr["step"]
    shown = ui.get_by_test_id("hparam-apply-all-status").inner_text()
    assert shown.endswith(f"at step {step}"), shown
    (applied,) = [e for e in _journal(run_dir) if e.get("event") == "command" and e.get("kind") == "set_hparam"]
    assert applied["status"] == "applied" and applied["args"] == {"values": {"lr": 0.02, "dropout": 0.3}}

    def points_at_step() -> dict[str, list[float]]:
        scalars = read_scalars(run_dir)
        return {tag: [v for s, _, v in scalars.get(tag, []) if s == step] for tag in ("hparams/lr", "hparams/dropout")}

    points = wait_for(lambda: all(points_at_step().values()) and points_at_step(), "the points at the step", 30)
    assert points == {"hparams/lr": [pytest.approx(0.02)], "hparams/dropout": [pytest.approx(0.3)]}, points

    # One bad value among good ones: nothing is applied; the bad row says why, the good one that it was held back.
    ui.get_by_test_id("hparam-input-lr").fill("0.05")
    ui.get_by_test_id("hparam-input-momentum").fill("0.5")
    ui.get_by_test_id("hparam-input-dropout").fill("1.5")
    apply_all.click()
    expect(ui.get_by_test_id("hparam-apply-all-status")).to_have_text("nothing applied: refused dropout")
    expect(ui.get_by_test_id("hparam-error-dropout")).to_contain_text("OutOfBounds: dropout must be")
    expect(ui.get_by_test_id("hparam-error-dropout")).to_have_class(re.compile(r"\berror\b"))
    expect(ui.get_by_test_id("hparam-error-lr")).to_have_text("not applied: another value was refused")
    expect(ui.get_by_test_id("hparam-error-momentum")).to_have_text("not applied: another value was refused")
    rejected = [e for e in _journal(run_dir) if e.get("event") == "command" and e.get("status") == "rejected"]
    assert [e["args"] for e in rejected] == [{"values": {"lr": 0.05, "momentum": 0.5, "dropout": 1.5}}]
    assert list(rejected[0]["error"]["refused"]) == ["dropout"]
    hparams = state_of(run_dir)["hparams"]
    assert (hparams["lr"]["value"], hparams["momentum"]["value"], hparams["dropout"]["value"]) == (0.02, 0.9, 0.3)
    expect(ui.get_by_test_id("hparam-input-lr")).to_have_value("0.05")  # kept, to fix the bad one and retry

    # Two bad values: both are named, each on its own row.
    ui.get_by_test_id("hparam-input-momentum").fill("fast")
    apply_all.click()
    expect(ui.get_by_test_id("hparam-apply-all-status")).to_have_text("nothing applied: refused momentum, dropout")
    expect(ui.get_by_test_id("hparam-error-momentum")).to_contain_text("WrongType: momentum takes")
    expect(ui.get_by_test_id("hparam-error-dropout")).to_contain_text("OutOfBounds")
    expect(ui.get_by_test_id("hparam-error-lr")).to_have_text("not applied: another value was refused")
    assert state_of(run_dir)["hparams"]["lr"]["value"] == 0.02


def test_a_metric_first_run_shows_its_error_with_the_users_line_or_its_value(
    tmp_path: Path,
    start_training: Any,
    start_tensorboard: Any,
    page: Any,  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    run_dir = tmp_path / "logs" / "exp"
    start_training(run_dir)
    ui = tab(page, start_tensorboard(tmp_path / "logs").url)
    expect(ui.get_by_test_id("run-status")).to_have_text("live")

    # Its first run fails: the add form and the row say so (type, message, the user's own line); it stays, paused.
    ui.get_by_test_id("metric-name").fill("boom")
    ui.get_by_test_id("metric-code").evaluate("(area) => { area.dataset.autoindent = 'off'; }")
    ui.get_by_test_id("metric-code").fill("w = model.weight\nreturn model.no_such_layer.weight.norm().item()")
    ui.get_by_test_id("metric-add").click()
    status = ui.get_by_test_id("metric-add-status")
    expect(status).to_contain_text("metric boom added at step")
    expect(status).to_contain_text("but failed at its first run: AttributeError: ")
    expect(status).to_contain_text("no_such_layer")
    expect(status).to_contain_text("(line 2: return model.no_such_layer.weight.norm().item())")
    expect(status).to_contain_text("It stays installed, paused")
    expect(status).to_have_class(re.compile(r"\berror\b"))
    expect(ui.get_by_test_id("metric-status-boom")).to_have_text("paused")
    row_error = ui.get_by_test_id("metric-error-boom")
    expect(row_error.locator("summary")).to_contain_text("failed at its first run (step ")
    expect(row_error.locator("summary")).to_contain_text("AttributeError: ")
    expect(row_error.locator("summary")).to_contain_text("line 2: return model.no_such_layer")
    row_error.locator("summary").click()
    expect(row_error.locator("pre")).to_contain_text('File "<metric boom>", line 2')
    metric = state_of(run_dir)["metrics"]["boom"]
    assert metric["status"] == "paused" and metric["first_error"]["line"] == 2, metric
    assert "bidviz/boom" not in read_scalars(run_dir)  # the check run writes nothing

    # Fixed in the form (which kept the code and ticked replace): the first value shows, and the row runs.
    expect(ui.get_by_test_id("metric-replace")).to_be_checked()
    ui.get_by_test_id("metric-code").fill("model.weight.shape[1] + 3")
    ui.get_by_test_id("metric-add").click()
    added = re.compile(r"metric boom added at step \d+; first value 7; its series is bidviz/boom")
    expect(status).to_contain_text(added)
    expect(status).not_to_have_class(re.compile(r"\berror\b"))
    expect(ui.get_by_test_id("metric-status-boom")).to_have_text("running")
    expect(ui.get_by_test_id("metric-value-boom")).to_have_text("7")
    expect(ui.get_by_test_id("metric-error-boom")).to_be_hidden()
    wait_for(lambda: read_scalars(run_dir).get("bidviz/boom"), "bidviz/boom in the event files", 30)

    # A metric set whose metric fails at its first run: imported, but the form says it was added paused, and why.
    metric_set = tmp_path / "set.json"
    metric_set.write_text(json.dumps(kinds.metric_set({"bad": {"code": "1 / 0"}})))
    ui.get_by_test_id("metric-import").set_input_files(str(metric_set))
    expect(status).to_contain_text("imported 0 of 1; failed: bad: added, paused: failed at its first run")
    expect(status).to_contain_text("ZeroDivisionError: division by zero (line 1: 1 / 0)")
    expect(ui.get_by_test_id("metric-status-bad")).to_have_text("paused")
