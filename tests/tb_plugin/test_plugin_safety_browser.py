"""The safety net from the tab, in headless Chromium against stock TensorBoard and a real training process: a bad lr
blows the run up, the guard pauses it and the banner says so, "undo" beside the change rewinds it, a good lr and
Resume bring the loss back to its earlier level; a rule written in the Rules panel acts and is journaled."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any

from tab_support import Proc, clean_env, wait_for
from test_plugin_browser import TIMEOUT_MS, browser, page, state_of, tab  # noqa: F401 - fixtures

from bidviz.writers import read_scalars

SAFETY_TRAINER = Path(__file__).parents[1] / "bridge" / "safety_trainer.py"


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(s, v) for s, _, v in read_scalars(run_dir).get("train/loss", [])]


def test_blow_up_guard_undo_recover_and_a_rule_from_the_tab(
    tmp_path: Path,
    procs: list[Proc],
    start_tensorboard: Any,
    page: Any,  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    run_dir = tmp_path / "logs" / "exp"
    training = Proc([sys.executable, str(SAFETY_TRAINER), str(run_dir)], tmp_path / "train.log", clean_env())
    procs.append(training)
    training.wait_output("READY")
    wait_for(lambda: (state_of(run_dir).get("step") or 0) >= 100, "100 steps")
    ui = tab(page, start_tensorboard(tmp_path / "logs").url)
    expect(ui.get_by_test_id("hparam-value-lr")).to_have_text("0.05")

    ui.get_by_test_id("hparam-input-lr").fill("200")
    ui.get_by_test_id("hparam-apply-lr").click()
    expect(ui.get_by_test_id("banner")).to_contain_text("Paused by the divergence guard at step", timeout=TIMEOUT_MS)
    expect(ui.get_by_test_id("banner")).to_contain_text("Click undo")
    changed_at = state_of(run_dir)["hparams"]["lr"]["changes"][-1]["step"]
    undo = ui.locator('[data-testid="journal"] [data-testid^="undo-"]')
    expect(undo).to_have_count(1)  # only the change has a snapshot from right before it
    undo.click()
    expect(ui.get_by_test_id("control-message")).to_contain_text(f"to snapshot s1 of step {changed_at}")
    expect(ui.get_by_test_id("hparam-value-lr")).to_have_text("0.05")
    expect(ui.get_by_test_id("journal")).to_contain_text("divergence guard: loss is")
    expect(ui.get_by_test_id("journal")).to_contain_text("rewound at step")
    expect(undo).to_have_count(2)  # the rewind is undoable too
    ui.get_by_test_id("hparam-input-lr").fill("0.02")
    ui.get_by_test_id("hparam-apply-lr").click()
    expect(ui.get_by_test_id("hparam-value-lr")).to_have_text("0.02")
    ui.get_by_test_id("resume").click()
    resumed = wait_for(lambda: not state_of(run_dir).get("paused") and state_of(run_dir)["step"], "the resume")
    wait_for(lambda: (_losses(run_dir) or [(0, 0)])[-1][0] > resumed + 100, "100 steps after the resume", 60)
    points = _losses(run_dir)
    before = [v for s, v in points if changed_at - 20 <= s < changed_at]
    after = [v for s, v in points if s > resumed + 50]
    assert after and all(math.isfinite(v) for v in after)
    assert sum(after) / len(after) <= 1.05 * sum(before) / len(before)

    # A rule written in the Rules panel acts once per cool-down and is journaled with what it did.
    ui.get_by_test_id("rule-example").select_option("lr_plateau")
    expect(ui.get_by_test_id("rule-code")).to_have_value(re.compile(r"set\(lr=hparams\['lr'\] / 2\)"))
    ui.get_by_test_id("rule-name").fill("calm")
    ui.get_by_test_id("rule-code").fill("if step > 0:\n    pause('a rule says calm')")
    ui.get_by_test_id("rule-cooldown").fill("50")
    ui.get_by_test_id("rule-add").click()
    expect(ui.get_by_test_id("rule-fired-calm")).to_have_text("1")
    expect(ui.get_by_test_id("journal")).to_contain_text("rule calm fired: pause: a rule says calm")
    expect(ui.get_by_test_id("run-status")).to_have_text("paused")
    ui.get_by_test_id("rule-remove-calm").click()
    expect(ui.get_by_test_id("rule-row-calm")).to_have_count(0)
    ui.get_by_test_id("resume").click()
    wait_for(lambda: not state_of(run_dir).get("paused"), "the second resume")
