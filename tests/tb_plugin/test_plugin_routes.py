"""The plugin's routes through TensorBoard's real WSGI app (werkzeug's test client around `TensorBoardWSGI`, a real
data provider over a real log directory, a real training process with a Bridge), and every hostile request refused."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from tab_support import wait_for, wsgi_app
from werkzeug.test import Client

from bidviz import kinds
from bidviz.channel import Mailbox
from bidviz.errors import PublicError
from bidviz.tb_plugin.control_token import TOKEN_HEADER, ensure_token
from bidviz.tb_plugin.core import ControlPlane, DirectoryRuns

P = "/data/plugin/bidviz"
ID = "0123456789abcdef0123456789abcdef"


def owner() -> dict[str, str]:
    """The header that proves a request is the owner's where the kernel cannot tell (werkzeug's test client has no
    socket): the control token of this test's config directory."""
    return {TOKEN_HEADER: ensure_token()}


class Tab:
    """A browser-like client of one app: same-origin headers, the owner's control token on every request (as the
    tab opened with `bidviz tab-link`'s link sends it) and the CSRF token on every POST."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.client = Client(app)
        self.origin = "http://localhost"

    def get(self, route: str, **headers: str) -> tuple[int, Any]:
        r = self.client.get(P + route, headers={"Sec-Fetch-Site": "same-origin", **owner(), **headers})
        return r.status_code, _body(r)

    def token(self) -> str:
        status, body = self.get("/csrf")
        assert status == 200, body
        return str(body["token"])

    def post(self, route: str, body: Any, *, content_type: str = "application/json", **headers: str) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        base = {
            "Origin": self.origin,
            "Sec-Fetch-Site": "same-origin",
            "Content-Type": content_type,
            "X-BIDViz-CSRF": self.token(),
            **owner(),
        }
        base.update(headers)
        sent = {k: v for k, v in base.items() if v != ""}
        r = self.client.post(P + route, data=data, headers=sent)
        return r.status_code, _body(r)

    def command(self, run: str, kind: str, args: dict[str, Any]) -> dict[str, Any]:
        status, body = self.post("/command", {"run": run, "kind": kind, "args": args})
        assert status == 200, body
        command_id = body["id"]

        def answered() -> Any:
            status, resp = self.get(f"/response?run={run}&id={command_id}")
            assert (status, resp["status"] == "pending") in ((200, False), (202, True)), resp
            return resp if status == 200 else None

        return wait_for(answered, f"the response to {kind}", 30)  # type: ignore[no-any-return]


def _body(r: Any) -> Any:
    text = r.get_data(as_text=True)
    try:
        return json.loads(text)
    except ValueError:
        return text


def inbox(run_dir: Path) -> list[str]:
    return sorted(os.listdir(run_dir / ".bidviz" / "inbox"))


@pytest.fixture
def live(tmp_path: Path, start_training: Any) -> tuple[Tab, Path]:
    """A log directory with one live training run `exp`, and the tab's client on TensorBoard's app over it."""
    logdir = tmp_path / "logs"
    run_dir = logdir / "exp"
    start_training(run_dir)
    app = wsgi_app(logdir)
    return Tab(app), run_dir


def test_plugin_is_listed_as_an_iframe_tab_and_serves_its_module(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    tab = Tab(wsgi_app(tmp_path / "logs"))
    listing = tab.client.get("/data/plugins_listing").get_json()
    assert listing["bidviz"]["enabled"] is True
    assert listing["bidviz"]["tab_name"] == "BIDViz"
    assert listing["bidviz"]["loading_mechanism"] == {"type": "IFRAME", "module_path": f"{P}/static/index.js"}
    entry = tab.client.get("/data/plugin_entry.html?name=bidviz").get_data(as_text=True)
    assert "./static/index.js" in entry
    r = tab.client.get(f"{P}/static/index.js")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/javascript")
    assert "export async function render" in r.get_data(as_text=True)
    for name in (
        "api.js",
        "charts.js",
        "journal.js",
        "live.js",
        "dom.js",
        "metrics.js",
        "uPlot.iife.min.js",
        "style.css",
    ):
        assert tab.client.get(f"{P}/static/{name}").status_code == 200, name
    for bad in ("../plugin.py", "..%2fplugin.py", "x/index.js", "core.py", "nope.js"):
        assert tab.client.get(f"{P}/static/{bad}").status_code == 404, bad


def test_runs_state_command_response_journal_through_tensorboard(live: tuple[Tab, Path]) -> None:
    tab, run_dir = live
    status, runs = tab.get("/runs")
    assert status == 200, runs
    row = next(r for r in runs["runs"] if r["run"] == "exp")
    assert row["live"] == "live" and row["controllable"] is True and row["pid"] > 0

    resp = tab.command("exp", "set_hparam", {"name": "lr", "value": 0.025})
    assert resp["status"] == "applied", resp
    state = wait_for(
        lambda: (
            tab.get("/state?run=exp")[1]["state"]["hparams"]["lr"]["value"] == 0.025 and tab.get("/state?run=exp")[1]
        ),
        "lr 0.025 in the state",
    )
    assert state["live"] == "live"
    assert state["state"]["hparams"]["lr"]["changes"][-1]["sender"].startswith("tab:")

    resp = tab.command("exp", "eval", {"code": "optimizer.param_groups[0]['lr']"})
    assert resp["status"] == "applied" and resp["result"] == 0.025, resp

    bad = tab.command("exp", "eval", {"code": "1/0"})
    assert bad["status"] == "failed" and "ZeroDivisionError" in bad["error"]["traceback"]

    resp = tab.command("exp", "add_metric", {"name": "w0", "code": "model.weight[0, 0].item()"})
    assert resp["status"] == "applied", resp
    wait_for(lambda: tab.get("/state?run=exp")[1]["state"]["metrics"]["w0"]["recent"], "values of w0 in the state")

    status, journal = tab.get("/journal?run=exp")
    assert status == 200
    commands = [e for e in journal["entries"] if e["event"] == "command"]
    assert [e.get("kind") for e in commands][-4:] == ["set_hparam", "eval", "eval", "add_metric"]
    assert [e["label"] for e in commands][-4:] == [
        "set lr=0.025",
        "eval optimizer.param_groups[0]['lr']",
        "eval 1/0",
        "add metric w0: model.weight[0, 0].item()",
    ]
    assert "response" not in journal["entries"][-1]  # slimmed: status and a bounded repr only


def test_data_and_tags_serve_any_scalar_series_as_csv_and_json(live: tuple[Tab, Path]) -> None:
    tab, run_dir = live
    assert tab.command("exp", "add_metric", {"name": "twice", "code": "2 * step"})["status"] == "applied"

    def series() -> Any:
        status, body = tab.get("/data?run=exp&tag=bidviz/twice&format=json")
        return status == 200 and len(body["points"]) >= 3 and body

    body = wait_for(series, "bidviz/twice in the event files", 30)
    assert all(p["value"] == 2 * p["step"] for p in body["points"])

    r = tab.client.get(f"{P}/data?run=exp&tag=bidviz/twice&format=csv&download=1", headers=owner())
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv")
    assert r.headers["Content-Disposition"].startswith("attachment;")
    rows = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    assert rows and all(float(row["value"]) == 2 * int(row["step"]) for row in rows)

    tab.app.reload()
    status, tags = tab.get("/tags?run=exp")
    assert status == 200 and "bidviz/twice" in tags["tags"] and "hparams/lr" in tags["tags"]

    status, err = tab.get("/data?run=exp&tag=nope&format=csv")
    assert status == 404 and "has no scalar series 'nope'" in err["error"]
    status, err = tab.get("/data?run=exp&tag=bidviz/twice&format=xml")
    assert status == 400 and "csv or json" in err["error"]


def test_check_reports_a_syntax_error_with_its_line(live: tuple[Tab, Path]) -> None:
    tab, _ = live
    status, ok = tab.post("/check", {"code": "w = model.weight\nreturn w.norm()"})
    assert status == 200 and ok == {"ok": True}
    status, bad = tab.post("/check", {"code": "x = 1\ny = 2\nif x\n    y = 3"})
    assert status == 200 and bad == {"ok": False, "error": "SyntaxError: expected ':'", "line": 3, "column": 5}


def test_bad_commands_get_messages_and_send_nothing(live: tuple[Tab, Path]) -> None:
    tab, run_dir = live
    before = inbox(run_dir)
    cases = [
        ({"run": "exp", "kind": "launch", "args": {}}, 400, "unknown kind 'launch'"),
        ({"run": "exp", "kind": "set_hparam", "args": {"name": "lr"}}, 400, "missing value"),
        ({"run": "exp", "kind": "pause", "args": {}, "extra": 1}, 400, "unknown extra"),
        ([1, 2], 400, "JSON object"),
    ]
    for body, status, needle in cases:
        got, err = tab.post("/command", body)
        assert (got, needle in err["error"]) == (status, True), err
    got, err = tab.post("/command", b"{not json")
    assert got == 400 and "JSON" in err["error"]
    got, err = tab.post("/command", {"run": "exp", "kind": "eval", "args": {"code": "x" * 600_000}})
    assert got == 413, err
    assert inbox(run_dir) == before


# -- hostile requests -------------------------------------------------------------------------------------------


def test_posts_without_the_csrf_token_json_or_same_origin_are_refused(live: tuple[Tab, Path]) -> None:
    tab, run_dir = live
    body = {"run": "exp", "kind": "eval", "args": {"code": "import os; os.system('touch /tmp/pwned')"}}
    hostile = [
        ({"X-BIDViz-CSRF": ""}, 403, "missing X-BIDViz-CSRF"),
        ({"X-BIDViz-CSRF": "guess"}, 403, "wrong X-BIDViz-CSRF"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"),
        ({"Content-Type": "text/plain"}, 415, "application/json"),
        ({"Origin": "http://evil.example"}, 403, "Origin 'http://evil.example'"),
        ({"Origin": "http://localhost.evil.example"}, 403, "cross-origin"),
        ({"Origin": "null"}, 403, "opaque origin"),
        ({"Sec-Fetch-Site": "cross-site"}, 403, "Sec-Fetch-Site is 'cross-site'"),
        ({"Sec-Fetch-Site": "same-site"}, 403, "not same-origin"),
        ({"Host": "evil.example"}, 403, "Host 'evil.example' is not allowed"),
        ({"Host": "attacker.test:6006", "Origin": "http://attacker.test:6006"}, 403, "--bidviz_allowed_hosts"),
    ]
    for headers, status, needle in hostile:
        got, err = tab.post("/command", body, **headers)
        assert got == status and needle in err["error"], (headers, got, err)
    assert inbox(run_dir) == []
    r = tab.client.post(f"{P}/command", data="run=exp&kind=stop", content_type="application/x-www-form-urlencoded")
    assert r.status_code in (403, 415)
    r = tab.client.get(f"{P}/command")
    assert r.status_code == 405
    assert inbox(run_dir) == []
    assert tab.command("exp", "eval", {"code": "1 + 1"})["result"] == 2  # the same tab, done right, works


def test_dns_rebinding_cannot_read_the_token_or_state(live: tuple[Tab, Path]) -> None:
    tab, _ = live
    for route in ("/csrf", "/runs", "/state?run=exp", "/journal?run=exp", "/static/index.js"):
        r = tab.client.get(P + route, headers={"Host": "rebound.example:6006"})
        assert r.status_code == 403 and "token" not in r.get_data(as_text=True), route
    status, _ = tab.get("/csrf", **{"Sec-Fetch-Site": "cross-site"})
    assert status == 403
    status, _ = tab.get("/csrf", **{"Sec-Fetch-Site": "none"})  # typed into the address bar
    assert status == 200
    status, _ = tab.get("/csrf", Host="127.0.0.1:6006")
    assert status == 200


def test_allowed_hosts_flag_extends_the_allow_list(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    app = wsgi_app(tmp_path / "logs")
    assert Client(app).get(f"{P}/runs", headers={"Host": "box.lan:6006"}).status_code == 403
    from tensorboard.backend import application
    from tensorboard.plugins import base_plugin

    from bidviz.tb_plugin.plugin import BIDVizPlugin

    flags = type("Flags", (), {"bidviz_allowed_hosts": "box.lan, ::1", "host": "127.0.0.1"})()
    plugin = BIDVizPlugin(base_plugin.TBContext(logdir=str(tmp_path / "logs"), flags=flags))
    client = Client(application.TensorBoardWSGI([plugin]))
    assert client.get(f"{P}/csrf", headers={"Host": "box.lan:6006", **owner()}).status_code == 200
    assert client.get(f"{P}/csrf", headers={"Host": "[::1]:6006", **owner()}).status_code == 200
    assert client.get(f"{P}/csrf", headers={"Host": "box.lan.evil:6006", **owner()}).status_code == 403


def test_run_names_that_escape_the_log_directory_are_refused(tmp_path: Path, start_training: Any) -> None:
    logdir = tmp_path / "logs"
    outside = tmp_path / "outside"
    start_training(outside / "victim")
    start_training(logdir / "exp")
    (logdir / "escape").symlink_to(outside / "victim", target_is_directory=True)
    tab = Tab(wsgi_app(logdir))
    victim_inbox = inbox(outside / "victim")
    for run, status, needle in [
        ("../outside/victim", 400, "relative name"),
        ("exp/../../outside/victim", 400, "relative name"),
        (str(outside / "victim"), 400, "relative name"),
        ("/etc", 400, "relative name"),
        ("nope", 404, "no run 'nope'"),
        ("", 400, "give the run"),
    ]:
        got, err = tab.post("/command", {"run": run, "kind": "stop", "args": {}})
        assert got == status and needle in err["error"], (run, got, err)
        got, err = tab.get(f"/state?run={run}")
        assert got == status, (run, got, err)
    got, err = tab.post("/command", {"run": "escape", "kind": "stop", "args": {}})
    assert got in (403, 404), err  # TensorBoard may not list a symlinked run at all; if it does, we refuse it
    assert inbox(outside / "victim") == victim_inbox

    # Listed by a source that follows the link, the run still resolves outside the log directory: refused.
    class Linked(DirectoryRuns):
        def run_names(self) -> list[str]:
            return [*super().run_names(), "escape"]

    with pytest.raises(PublicError, match="outside the log directory") as info:
        ControlPlane(str(logdir), Linked(logdir)).command(
            json.dumps({"run": "escape", "kind": "stop"}).encode(), sender="test"
        )
    assert info.value.http_status == 403
    assert inbox(outside / "victim") == victim_inbox


def test_a_symlinked_mailbox_is_refused(tmp_path: Path, start_training: Any) -> None:
    logdir = tmp_path / "logs"
    start_training(tmp_path / "elsewhere")
    start_training(logdir / "exp")
    trap = logdir / "trap"
    trap.mkdir()
    (logdir / "exp" / ".bidviz").rename(tmp_path / "moved")  # the live bridge's mailbox, linked in from a run
    (trap / ".bidviz").symlink_to(tmp_path / "elsewhere" / ".bidviz")
    (trap / "events.out.tfevents.0.x").write_bytes(
        (logdir / "exp").joinpath(next(f for f in os.listdir(logdir / "exp") if "tfevents" in f)).read_bytes()
    )
    tab = Tab(wsgi_app(logdir))
    got, err = tab.post("/command", {"run": "trap", "kind": "stop", "args": {}})
    assert got == 403 and "symlink" in err["error"], err
    assert inbox(tmp_path / "elsewhere") == []


def test_a_run_without_a_bridge_is_listed_read_only(tmp_path: Path) -> None:
    from tensorboardX import SummaryWriter

    logdir = tmp_path / "logs"
    with SummaryWriter(str(logdir / "plain")) as w:
        for i in range(5):
            w.add_scalar("loss", 1.0 / (i + 1), i)
    tab = Tab(wsgi_app(logdir))
    status, runs = tab.get("/runs")
    assert runs["runs"] == [
        {
            "run": "plain",
            "live": "none",
            "controllable": False,
            "step": None,
            "steps_per_sec": None,
            "heartbeat": None,
            "heartbeat_age": None,
            "paused": None,
            "pid": None,
            "host": None,
            "guard": None,
        }
    ]
    status, state = tab.get("/state?run=plain")
    assert status == 200 and state["state"] is None and state["live"] == "none"
    status, err = tab.post("/command", {"run": "plain", "kind": "pause", "args": {}})
    assert status == 409 and "has no bridge" in err["error"] and "Bridge(" in err["error"]
    status, data = tab.get("/data?run=plain&tag=loss&format=json")
    assert status == 200 and [p["step"] for p in data["points"]] == [0, 1, 2, 3, 4]


def test_logdir_spec_and_remote_logdirs_explain_themselves(tmp_path: Path) -> None:
    spec = ControlPlane("", DirectoryRuns(tmp_path))
    assert "--logdir_spec" in (spec.control_problem() or "")
    remote = ControlPlane("gs://bucket/runs", DirectoryRuns(tmp_path))
    assert "remote" in (remote.control_problem() or "")
    with pytest.raises(PublicError, match="remote") as info:
        remote.command(json.dumps({"run": "x", "kind": "stop"}).encode(), sender="t")
    assert info.value.http_status == 409


def test_a_failed_import_shows_the_error_in_the_tab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from tensorboard.backend import application
    from tensorboard.plugins import base_plugin

    from bidviz.tb_plugin.loader import BIDVizLoader

    monkeypatch.setitem(sys.modules, "bidviz.tb_plugin.plugin", None)  # as if it could not be imported
    plugin = BIDVizLoader().load(base_plugin.TBContext(logdir=str(tmp_path)))
    client = Client(application.TensorBoardWSGI([plugin]))
    assert client.get("/data/plugins_listing").get_json()["bidviz"]["enabled"] is True
    module = client.get(f"{P}/static/index.js").get_data(as_text=True)
    assert "could not load" in module and "pip install" in module
    r = client.get(f"{P}/runs")
    assert r.status_code == 500 and "could not load" in r.get_json()["error"]


@pytest.mark.skipif(os.getuid() != 0, reason="giving the mailbox to another user needs root (CI runs as root)")
def test_a_mailbox_of_another_user_is_refused(live: tuple[Tab, Path]) -> None:
    tab, run_dir = live
    os.chown(run_dir / ".bidviz", 65534, 65534)
    try:
        status, err = tab.post("/command", {"run": "exp", "kind": "stop", "args": {}})
        assert status == 403 and "belongs to uid 65534" in err["error"], err
        status, err = tab.get("/state?run=exp")
        assert status == 403
        assert inbox(run_dir) == []
    finally:
        os.chown(run_dir / ".bidviz", 0, 0)


# -- the kinds table, and mailboxes that cannot be trusted -----------------------------------------------------


def _bridgeless_run(logdir: Path, name: str = "exp") -> Mailbox:
    """A run TensorBoard lists (an event file) with a mailbox but no bridge behind it: files are ours to forge."""
    from tensorboardX import SummaryWriter

    with SummaryWriter(str(logdir / name)) as w:
        w.add_scalar("loss", 1.0, 0)
    mailbox = Mailbox(logdir / name)
    mailbox.create()
    return mailbox


def test_kinds_serves_the_one_table(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    tab = Tab(wsgi_app(tmp_path / "logs"))
    status, table = tab.get("/kinds")
    assert status == 200 and table == json.loads(json.dumps(kinds.public_table()))
    assert table["metric_kinds"] == list(kinds.METRIC_KINDS)
    assert table["metric_set"] == {
        "key": "bidviz_metrics",
        "version": 1,
        "fields": ["name", "code", "every", "kind", "reduce"],
        "rule_fields": ["name", "code", "every", "cooldown"],
    }
    assert [k["kind"] for k in table["kinds"]] == list(kinds.KINDS)
    assert set(table["rule_examples"]) == {"lr_plateau", "gnorm_spike"}


def test_journal_lines_without_a_label_get_their_kinds_label(tmp_path: Path) -> None:
    mailbox = _bridgeless_run(tmp_path / "logs")
    old = {"event": "command", "kind": "set_hparam", "args": {"name": "lr", "value": 0.01}, "status": "applied"}
    mailbox.append_journal(old)
    mailbox.append_journal({**old, "label": "as the bridge wrote it"})
    mailbox.append_journal({"event": "command", "kind": "launch_missiles", "args": {}, "status": "rejected"})
    mailbox.append_journal({"event": "metric_error", "metric": "m"})
    status, journal = Tab(wsgi_app(tmp_path / "logs")).get("/journal?run=exp")
    assert status == 200, journal
    assert [e.get("label") for e in journal["entries"]] == [
        "set lr=0.01",
        "as the bridge wrote it",
        "launch_missiles",
        None,
    ]


def test_pending_then_a_corrupt_response_is_an_error_naming_the_file(tmp_path: Path) -> None:
    mailbox = _bridgeless_run(tmp_path / "logs")
    tab = Tab(wsgi_app(tmp_path / "logs"))
    status, sent = tab.post("/command", {"run": "exp", "kind": "pause", "args": {}})
    assert status == 200 and sent["live"] == "none", sent
    status, body = tab.get(f"/response?run=exp&id={sent['id']}")
    assert (status, body) == (202, {"id": sent["id"], "status": "pending"})
    broken = mailbox.outbox / f"{sent['id']}.json"
    broken.write_bytes(b'{"v": 1, "status": "appl')
    status, err = tab.get(f"/response?run=exp&id={sent['id']}")
    assert status == 409 and str(broken) in err["error"] and "corrupt" in err["error"], err
    broken.write_text(json.dumps({"v": 1, "id": sent["id"], "status": "pending"}))  # a forged "pending"
    status, err = tab.get(f"/response?run=exp&id={sent['id']}")
    assert status == 409 and "is not a response" in err["error"], err
    broken.unlink()
    broken.mkdir()
    status, err = tab.get(f"/response?run=exp&id={sent['id']}")
    assert status == 409 and "is a directory" in err["error"], err


def test_a_corrupt_or_unreadable_state_is_reported_by_runs_and_state(tmp_path: Path) -> None:
    mailbox = _bridgeless_run(tmp_path / "logs")
    tab = Tab(wsgi_app(tmp_path / "logs"))
    for make_bad, reason in (
        (lambda: mailbox.state_path.write_text("{not json"), "not JSON"),
        (lambda: mailbox.state_path.write_text('"a string"'), "not an object"),
        (lambda: (mailbox.state_path.unlink(), mailbox.state_path.mkdir()), "is a directory"),
    ):
        make_bad()
        status, err = tab.get("/state?run=exp")
        assert status == 409 and str(mailbox.state_path) in err["error"] and reason in err["error"], err
        status, runs = tab.get("/runs")
        (row,) = runs["runs"]
        assert status == 200 and row["live"] == "unreadable" and reason in row["problem"], row
        assert row["controllable"] is False


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,
        b'{"run": "exp", "kind": "pause", "args": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"run": "exp", "kind": "eval", "args": {"code": "1", "now": ' + b"9" * 5000 + b"}}",
        b'{"run": "exp", "kind": "set_hparam", "args": {"name": "lr", "value": ' + b"9" * 4000 + b"}}",
        b'{"run": "exp", "kind": "set_hparam", "args": {"name": "lr", "value": NaN}}',
        b'{"run": "exp", "kind": "eval", "args": {"code": "\\ud800"}}',
        b'{"run": "exp", "kind": "set_hparam", "args": {"name": "\\udfff", "value": 1}}',
        b'{"run": "exp\\ud800", "kind": "pause", "args": {}}',
        b'{"run": "exp", "kind": "\\ud800", "args": {}}',
        b'{"run": "exp", "kind": "pause", "args": {}, "\\ud800": 1}',
        b'{"run": "exp", "kind": "pause", "args": {"\\u0000": 1}}',
        b"\xff\xfe{}",
        b'{"run": "exp", "kind": "add_metric", "args": {"name": "m", "code": "1", "every": 1e400}}',
    ],
    ids=lambda b: b[:40].decode("latin-1"),
)
def test_hostile_json_is_answered_400_and_sends_nothing(tmp_path: Path, body: bytes) -> None:
    mailbox = _bridgeless_run(tmp_path / "logs")
    tab = Tab(wsgi_app(tmp_path / "logs"))
    status, err = tab.post("/command", body)
    assert status == 400, (status, err)
    assert isinstance(err, dict) and err["error"], err
    assert list(mailbox.inbox.iterdir()) == []
    status, _ = tab.post("/check", body)
    assert status in (200, 400)


def test_check_survives_code_nested_past_the_compiler(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    tab = Tab(wsgi_app(tmp_path / "logs"))
    for code in ("(" * 100_000, "-" * 99_000 + "1", "[" * 5000 + "]" * 5000):
        status, body = tab.post("/check", {"code": code})
        assert status == 200 and body["ok"] is False, body
