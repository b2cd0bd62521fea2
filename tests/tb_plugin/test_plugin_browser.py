"""End to end in a real headless Chromium (Debian's, driven by Playwright): the stock `tensorboard` serves the BIDViz
tab, and a person sets lr, adds a metric and watches it, runs terminal commands, pauses, resumes and stops training.

Set BIDVIZ_SCREENSHOTS=docs to refresh the README's screenshot of the tab (docs/bidviz-tab.png) from this run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tab_support import clean_env, non_loopback_address, wait_for

from bidviz.tb_plugin.routes import login_name
from bidviz.writers import read_scalars

CHROMIUM = os.environ.get("BIDVIZ_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium (as .ci/run does), or set BIDVIZ_CHROMIUM")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.js_errors = errors
    yield page
    context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


def tab(page: Any, url: str) -> Any:
    page.goto(f"{url}/#bidviz")
    frame = page.frame_locator('iframe[src*="plugin_entry.html?name=bidviz"]')
    frame.get_by_test_id("run-select").wait_for(timeout=TIMEOUT_MS)
    return frame


def state_of(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / ".bidviz" / "state.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def test_steer_a_live_run_from_the_tab(tmp_path: Path, start_training: Any, start_tensorboard: Any, page: Any) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    logdir = tmp_path / "logs"
    run_dir = logdir / "exp"
    training = start_training(run_dir)
    tb = start_tensorboard(logdir)
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
    ui = tab(page, tb.url)

    expect(ui.get_by_test_id("run-select")).to_have_value("exp")
    expect(ui.get_by_test_id("run-status")).to_have_text("live")
    expect(ui.get_by_test_id("hparam-value-lr")).to_have_text("0.1")

    # Hyperparameters: a valid value is applied by training; an invalid one shows the bridge's rejection inline.
    ui.get_by_test_id("hparam-input-lr").fill("0.033")
    ui.get_by_test_id("hparam-apply-lr").click()
    expect(ui.get_by_test_id("hparam-value-lr")).to_have_text("0.033")
    wait_for(lambda: state_of(run_dir).get("hparams", {}).get("lr", {}).get("value") == 0.033, "lr in training")
    ui.get_by_test_id("hparam-input-dropout").fill("1.5")
    ui.get_by_test_id("hparam-apply-dropout").click()
    expect(ui.get_by_test_id("hparam-error-dropout")).to_contain_text("0.9")

    # Metrics: a syntax error shows at once with its line; a good metric's value appears and its chart fills.
    ui.get_by_test_id("metric-code").fill("w = model.weight\nif w\n    pass")
    expect(ui.get_by_test_id("metric-code-error")).to_contain_text("line 2")
    ui.get_by_test_id("metric-name").fill("bias")
    ui.get_by_test_id("metric-code").fill("model.bias.item()")
    expect(ui.get_by_test_id("metric-code-error")).to_have_text("")
    ui.get_by_test_id("metric-every").fill("2")
    ui.get_by_test_id("metric-add").click()
    row = ui.get_by_test_id("metric-row-bias")
    expect(row).to_be_visible()
    expect(ui.get_by_test_id("metric-status-bias")).to_have_text("running")
    expect(ui.get_by_test_id("metric-value-bias")).to_have_text(re.compile(r"^-?\d"))
    expect(ui.get_by_test_id("metric-chart-bias")).to_have_attribute("data-points", re.compile(r"^([3-9]|\d\d+)$"))
    expect(ui.get_by_test_id("metric-chart-bias").locator("canvas")).to_be_visible()  # uPlot's, with axes
    shown = float(ui.get_by_test_id("metric-value-bias").inner_text())
    written = wait_for(lambda: read_scalars(run_dir).get("bidviz/bias"), "bidviz/bias in the event files", 30)
    assert all(step % 2 == 0 for step, _, _ in written)
    assert shown == pytest.approx(written[-1][2], rel=0.2, abs=0.5)  # the same series, a moment apart

    # A metric that fails shows its traceback, expandable.
    ui.get_by_test_id("metric-name").fill("broken")
    ui.get_by_test_id("metric-code").fill("model.no_such_layer.weight")
    ui.get_by_test_id("metric-add").click()
    expect(ui.get_by_test_id("metric-error-broken")).to_contain_text("AttributeError")
    ui.get_by_test_id("metric-error-broken").locator("summary").click()
    expect(ui.get_by_test_id("metric-error-broken").locator("pre")).to_contain_text("Traceback")

    # Terminal: a result, a full traceback, and history.
    terminal = ui.get_by_test_id("terminal-input")
    terminal.fill("optimizer.param_groups[0]['lr']")
    ui.get_by_test_id("terminal-run").click()
    expect(ui.get_by_test_id("terminal-result").last).to_have_text("0.033")
    terminal.fill("1 / 0")
    terminal.press("Enter")
    error = ui.get_by_test_id("terminal-error").last
    expect(error).to_contain_text("ZeroDivisionError: division by zero")
    expect(error).to_contain_text("Traceback")
    terminal.press("ArrowUp")
    expect(terminal).to_have_value("1 / 0")
    terminal.press("ArrowUp")
    expect(terminal).to_have_value("optimizer.param_groups[0]['lr']")
    terminal.press("ArrowDown")
    terminal.press("ArrowDown")
    expect(terminal).to_have_value("")

    # Journal: who changed what, newest first.
    journal = ui.get_by_test_id("journal")
    expect(journal.locator("tbody tr").first).to_contain_text("eval 1 / 0")
    expect(journal).to_contain_text("set lr=0.033")
    expect(journal).to_contain_text("lr 0.1 → 0.033")  # the outcome as people read it, not a dict's repr
    expect(journal).to_contain_text(f"{login_name()} (tab)")  # the user's login name, not an address or a uid

    # Pause and resume: training stops stepping, then goes on.
    ui.get_by_test_id("pause").click()
    expect(ui.get_by_test_id("run-status")).to_have_text("paused")
    paused_at = wait_for(lambda: state_of(run_dir).get("paused") and state_of(run_dir)["step"], "paused state")
    page.wait_for_timeout(600)
    assert state_of(run_dir)["step"] == paused_at
    ui.get_by_test_id("resume").click()
    expect(ui.get_by_test_id("run-status")).to_have_text("live")
    wait_for(lambda: (state_of(run_dir).get("step") or 0) > paused_at + 5, "steps after resume")

    ui.get_by_test_id("terminal-input").fill("model.weight.shape")
    ui.get_by_test_id("terminal-run").click()
    expect(ui.get_by_test_id("terminal-result").last).to_have_text("torch.Size([1, 4])")
    page.frame(url=re.compile(r"plugin_entry\.html")).evaluate("document.activeElement.blur(); window.scrollTo(0, 0)")
    page.screenshot(path=str(tmp_path / "bidviz-tab.png"))
    if os.environ.get("BIDVIZ_SCREENSHOTS"):
        page.screenshot(path=os.path.join(os.environ["BIDVIZ_SCREENSHOTS"], "bidviz-tab.png"))

    # Stop, with a confirmation: the training script ends its loop the normal way.
    ui.get_by_test_id("stop").click()
    expect(ui.get_by_test_id("stop-confirmation")).to_be_visible()
    ui.get_by_test_id("stop-confirm").click()
    assert training.proc.wait(30) == 0
    assert "DONE" in training.output()
    expect(ui.get_by_test_id("run-status")).to_have_text(re.compile("ended|stale"))
    # An ended run shows so everywhere: controls off, a line saying how to start it again, metrics not "running".
    expect(ui.get_by_test_id("pause")).to_be_disabled()
    expect(ui.get_by_test_id("stop")).to_be_disabled()
    expect(ui.get_by_test_id("restart-help")).to_contain_text("start its training script again")
    expect(ui.get_by_test_id("metric-status-bias")).to_have_text(re.compile("ended|stale"))
    # Pending answers are 202s, not 404s: a whole session of commands logged no error in the console.
    assert not console, console


def test_runs_without_a_bridge_are_read_only_with_help(tmp_path: Path, start_tensorboard: Any, page: Any) -> None:
    from playwright.sync_api import expect
    from tensorboardX import SummaryWriter

    expect.set_options(timeout=TIMEOUT_MS)
    logdir = tmp_path / "logs"
    with SummaryWriter(str(logdir / "plain")) as w:
        for i in range(4):
            w.add_scalar("loss", 1.0 / (i + 1), i)
    tb = start_tensorboard(logdir)
    ui = tab(page, tb.url)
    expect(ui.get_by_test_id("run-select")).to_have_value("plain")
    expect(ui.get_by_test_id("attach-help")).to_be_visible()
    expect(ui.get_by_test_id("attach-help-text")).to_contain_text("has no BIDViz bridge")
    expect(ui.get_by_test_id("pause")).to_be_disabled()
    expect(ui.get_by_test_id("terminal-run")).to_be_disabled()
    expect(ui.get_by_test_id("download-tag")).to_have_value("loss")
    href = ui.get_by_test_id("download-csv").get_attribute("href")
    assert href is not None and "format=csv" in href
    with page.expect_download() as download:
        ui.get_by_test_id("download-csv").click()
    text = Path(download.value.path()).read_text()
    assert text.splitlines()[0] == "step,wall_time,value" and len(text.splitlines()) == 5


def test_metric_controls_diagnostics_export_import_png_and_now(
    tmp_path: Path, start_training: Any, start_tensorboard: Any, page: Any
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    logdir = tmp_path / "logs"
    run_dir = logdir / "exp"
    start_training(run_dir)
    tb = start_tensorboard(logdir)
    ui = tab(page, tb.url)
    expect(ui.get_by_test_id("run-status")).to_have_text("live")

    ui.get_by_test_id("metric-name").fill("wsum")
    ui.get_by_test_id("metric-code").press_sequentially("if step >= 0:\nreturn float(model.weight.sum())")
    assert ui.get_by_test_id("metric-code").input_value() == "if step >= 0:\n    return float(model.weight.sum())"
    ui.get_by_test_id("metric-add").click()
    expect(ui.get_by_test_id("metric-status-wsum")).to_have_text("running")
    expect(ui.get_by_test_id("metric-value-wsum")).to_have_text(re.compile(r"^-?\d"))

    ui.get_by_test_id("metric-pause-wsum").click()
    expect(ui.get_by_test_id("metric-status-wsum")).to_have_text("paused")
    ui.get_by_test_id("metric-resume-wsum").click()
    expect(ui.get_by_test_id("metric-status-wsum")).to_have_text("running")

    with page.expect_download() as png:
        ui.get_by_test_id("metric-png-wsum").click()
    assert Path(png.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with page.expect_download() as exported:
        ui.get_by_test_id("metric-export").click()
    metric_set = json.loads(Path(exported.value.path()).read_text())
    assert metric_set["bidviz_metrics"] == 1
    assert [(m["name"], m["code"]) for m in metric_set["metrics"]] == [
        ("wsum", "if step >= 0:\n    return float(model.weight.sum())")
    ]

    ui.get_by_test_id("metric-remove-wsum").click()
    expect(ui.get_by_test_id("metric-row-wsum")).to_have_count(0)
    saved = tmp_path / "set.json"
    saved.write_text(json.dumps(metric_set))
    ui.get_by_test_id("metric-import").set_input_files(str(saved))
    expect(ui.get_by_test_id("metric-add-status")).to_contain_text("imported 1 metric")
    expect(ui.get_by_test_id("metric-status-wsum")).to_have_text("running")

    # The metric kinds come from GET kinds (the one table), not from a copy in the tab.
    from bidviz import kinds

    expect(ui.get_by_test_id("metric-kind").locator("option")).to_have_text(list(kinds.METRIC_KINDS))
    expect(ui.get_by_test_id("metric-kind")).to_have_value("auto")
    ui.get_by_test_id("metric-name").fill("wdist")
    ui.get_by_test_id("metric-code").fill("model.weight.detach().flatten()")
    ui.get_by_test_id("metric-kind").select_option("histogram")
    ui.get_by_test_id("metric-add").click()
    expect(ui.get_by_test_id("metric-status-wdist")).to_have_text("running")
    wait_for(
        lambda: read_scalars(run_dir).get("bidviz/wdist") is None and _has_histogram(run_dir, "bidviz/wdist"),
        "a histogram bidviz/wdist",
        30,
    )

    ui.get_by_test_id("metric-every").fill("5")
    ui.get_by_test_id("metric-diagnostics").click()
    expect(ui.get_by_test_id("metric-add-status")).to_contain_text("diagnostics on")
    wait_for(lambda: "bidviz/diag/weight_norm" in read_scalars(run_dir), "bidviz/diag/weight_norm", 30)

    # Paused training still answers a terminal command with "now".
    ui.get_by_test_id("pause").click()
    expect(ui.get_by_test_id("run-status")).to_have_text("paused")
    ui.get_by_test_id("terminal-now").check()
    ui.get_by_test_id("terminal-input").fill("bridge.paused")
    ui.get_by_test_id("terminal-run").click()
    expect(ui.get_by_test_id("terminal-result").last).to_have_text("True")
    ui.get_by_test_id("resume").click()
    expect(ui.get_by_test_id("run-status")).to_have_text("live")


def _has_histogram(run_dir: Path, tag: str) -> bool:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"histograms": 0})
    acc.Reload()
    return tag in acc.Tags()["histograms"]


def test_reload_no_runs_and_a_stale_bridge_are_explained(
    tmp_path: Path, start_training: Any, start_tensorboard: Any, page: Any
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    logdir = tmp_path / "logs"
    logdir.mkdir()
    tb = start_tensorboard(logdir)
    ui = tab(page, tb.url)
    expect(ui.get_by_test_id("attach-help-text")).to_contain_text("No runs")

    training = start_training(logdir / "exp")
    expect(ui.get_by_test_id("run-select")).to_have_value("exp")
    expect(ui.get_by_test_id("run-status")).to_have_text("live")

    # TensorBoard's reload button reaches the tab (the plugin library's DataReloaded message): it asks again.
    with page.expect_request(lambda r: "/data/plugin/bidviz/tags" in r.url, timeout=TIMEOUT_MS):
        page.locator("button.reload-button").click()  # TensorBoard's own reload button, in its toolbar

    training.proc.kill()
    training.proc.wait(10)
    expect(ui.get_by_test_id("run-status")).to_have_text("stale")
    expect(ui.get_by_test_id("banner")).to_contain_text("stale")


def test_the_tab_follows_tensorboards_dark_mode(tmp_path: Path, start_tensorboard: Any, page: Any) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    (tmp_path / "logs").mkdir()
    tb = start_tensorboard(tmp_path / "logs")
    ui = tab(page, tb.url)
    html = ui.locator("html")
    expect(html).not_to_have_class(re.compile("dark"))
    page.get_by_label("Menu for changing light or dark theme").click()  # TensorBoard's own theme toggle
    page.get_by_role("menuitem", name=re.compile("^Dark")).click()
    expect(html).to_have_class(re.compile(r"\bdark\b"))
    assert ui.locator("body").evaluate("b => getComputedStyle(b).backgroundColor") == "rgb(58, 58, 58)"
    page.get_by_label("Menu for changing light or dark theme").click()
    page.get_by_role("menuitem", name=re.compile("^Light")).click()
    expect(html).not_to_have_class(re.compile("dark"))


def test_where_the_kernel_cannot_vouch_the_tab_says_to_run_tab_link_and_then_works(
    tmp_path: Path, start_training: Any, start_tensorboard: Any, page: Any
) -> None:
    """TensorBoard bound to this machine's non-loopback address: the browser's peer is not a loopback socket, so
    the tab needs the owner's control token, from the link `bidviz tab-link` prints."""
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to bind TensorBoard to")
    logdir = tmp_path / "logs"
    start_training(logdir / "exp")
    tb = start_tensorboard(logdir, host=address)
    ui = tab(page, tb.url)
    banner = ui.get_by_test_id("banner")
    expect(banner).to_contain_text("cannot tell who sent this request")
    port = tb.url.rsplit(":", 1)[1]
    expect(banner).to_contain_text(f"run `bidviz tab-link --host {address} --port {port}`")
    expect(ui.get_by_test_id("run-view")).to_be_hidden()

    out = subprocess.run(
        [sys.executable, "-m", "bidviz", "tab-link", "--host", address, "--port", port],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    link = out.stdout.strip()
    page.goto(link)  # the same page, a new fragment: the open tab takes the token at its next request
    expect(ui.get_by_test_id("run-status")).to_have_text("live")
    expect(banner).to_be_hidden()
    wait_for(lambda: "token=" not in page.url, "the token taken out of the address bar")
    assert page.url.endswith("/#bidviz")

    terminal = ui.get_by_test_id("terminal-input")
    terminal.fill("2 + 3")
    ui.get_by_test_id("terminal-run").click()
    expect(ui.get_by_test_id("terminal-result").last).to_have_text("5")
    expect(ui.get_by_test_id("download-tag")).not_to_have_value("")
    with page.expect_download() as download:
        ui.get_by_test_id("download-csv").click()  # fetched with the token: a plain link cannot send it
    assert Path(download.value.path()).read_text().splitlines()[0] == "step,wall_time,value"

    page.reload()  # the browser tab keeps the token (sessionStorage); the address no longer has it
    ui = tab(page, tb.url)
    expect(ui.get_by_test_id("run-status")).to_have_text("live")

    other = page.context.browser.new_context()  # another browser session, without the link
    try:
        stranger = other.new_page()
        ui = tab(stranger, tb.url)
        expect(ui.get_by_test_id("banner")).to_contain_text("bidviz tab-link")
    finally:
        other.close()
