"""The BIDViz tab of `tensorboard --logdir s3://...`, in a real headless Chromium (Debian's, driven by Playwright),
steering a training process whose Bridge runs on the emulated S3: set lr, run a terminal command, stop."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from remote_support import Process, tensorboard, wait_for

from bidviz.channel import mailbox_for

HERE = Path(__file__).resolve().parent
BUCKET = "bidviz-test"  # made by the s3 fixture
CHROMIUM = os.environ.get("BIDVIZ_CHROMIUM", "/usr/bin/chromium")
TIMEOUT_MS = 30_000


@pytest.fixture
def page() -> Iterator[Any]:
    if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium (as .ci/run does), or set BIDVIZ_CHROMIUM")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        yield page
        context.close()
        browser.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


def test_the_tab_of_an_s3_logdir_steers_the_run(start: Callable[..., Process], page: Any) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    logdir = f"s3://{BUCKET}/tab-{uuid.uuid4().hex[:8]}"
    run = f"{logdir}/exp"
    trainer = start(str(HERE / "remote_trainer.py"), run)
    trainer.wait_output("READY")
    tb = tensorboard(start, logdir, "--reload_interval", "1")
    url = tb.wait_output(r"TensorBoard \S+ at (http://\S+:\d+)/").group(1)

    page.goto(f"{url}/#bidviz")
    ui = page.frame_locator('iframe[src*="plugin_entry.html?name=bidviz"]')
    ui.get_by_test_id("run-select").wait_for(timeout=TIMEOUT_MS)
    expect(ui.get_by_test_id("run-select")).to_have_value("exp")
    expect(ui.get_by_test_id("run-status")).to_have_text("live")
    expect(ui.get_by_test_id("hparam-value-lr")).to_have_text("0.1")

    ui.get_by_test_id("hparam-input-lr").fill("0.033")
    ui.get_by_test_id("hparam-apply-lr").click()
    expect(ui.get_by_test_id("hparam-value-lr")).to_have_text("0.033")
    mailbox = mailbox_for(run)
    wait_for(lambda: mailbox.read_state()["hparams"]["lr"]["value"] == 0.033, "lr = 0.033 in training's state")

    ui.get_by_test_id("terminal-input").fill("hparams['lr'] * 3")
    ui.get_by_test_id("terminal-run").click()
    expect(ui.get_by_test_id("terminal-result").last).to_have_text("0.099")
    expect(ui.get_by_test_id("journal")).to_contain_text("set lr=0.033")

    ui.get_by_test_id("stop").click()
    ui.get_by_test_id("stop-confirm").click()
    assert trainer.proc.wait(60) == 0
    expect(ui.get_by_test_id("run-status")).to_have_text(re.compile("ended|stale"))
    commands = [e["kind"] for e in mailbox.iter_journal() if e.get("event") == "command"]
    assert commands == ["set_hparam", "eval", "stop"], commands
