"""`bidviz serve`: the routes through Starlette's TestClient, the plugin's hostile requests repeated against the
server, and a real `bidviz serve` (uvicorn) on a free loopback port with a real training process: the live stream
(SSE) carries the state, journal entries and the very points of the event files, and a non-loopback bind refuses
every request, the stream included, without its token."""

from __future__ import annotations

import json
import socket
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from tab_support import Proc, clean_env, non_loopback_address, request, wait_for

from bidviz.tb_plugin.control_token import TOKEN_HEADER, ensure_token
from bidviz.tb_plugin.server import create_app
from bidviz.writers import EventWriter, read_scalars

ID = "0123456789abcdef0123456789abcdef"
BASE = "http://127.0.0.1:6007"


def bridged_run(logdir: Path, name: str = "exp") -> Path:
    """A run directory with an event file and a mailbox, as a Bridge leaves them (no process needed)."""
    from bidviz.channel import Mailbox

    run = logdir / name
    with EventWriter(run) as w:
        for step in range(5):
            w.add_scalar("loss", 1.0 / (step + 1), step)
    Mailbox(run).create()
    return run


class Client:
    def __init__(self, logdir: Path, **kw: Any) -> None:
        self.http = TestClient(create_app(logdir, **kw), base_url=BASE)
        self.owner = {TOKEN_HEADER: kw.get("token") or ensure_token()}

    def get(self, path: str, **headers: str) -> Any:
        return self.http.get(path, headers={**self.owner, **headers})

    def post(self, path: str, body: bytes, **headers: str) -> Any:
        csrf = self.get("/api/csrf").json()["token"]
        base = {"Content-Type": "application/json", "X-BIDViz-CSRF": csrf, "Origin": BASE, **self.owner}
        sent = {k: v for k, v in {**base, **headers}.items() if v != ""}
        return self.http.post(path, content=body, headers=sent)


def test_routes_answer_like_the_plugins(tmp_path: Path) -> None:
    run = bridged_run(tmp_path)
    c = Client(tmp_path)
    assert [r["run"] for r in c.get("/api/runs").json()["runs"]] == ["exp"]
    assert c.get("/api/tags?run=exp").json()["tags"] == ["loss"]
    points = c.get("/api/data?run=exp&tag=loss&format=json").json()["points"]
    assert [p["step"] for p in points] == list(range(5))
    sent = c.post("/api/command", json.dumps({"run": "exp", "kind": "pause", "args": {}}).encode())
    assert sent.status_code == 200, sent.text
    (inbox_file,) = (run / ".bidviz" / "inbox").iterdir()
    assert json.loads(inbox_file.read_text())["sender"].startswith("serve:")
    pending = c.get(f"/api/response?run=exp&id={sent.json()['id']}")
    assert (pending.status_code, pending.json()["status"]) == (202, "pending")
    page = c.http.get("/")
    assert page.status_code == 200 and b"static/page.js" in page.content
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    for asset in ("page.js", "charts.js", "uPlot.iife.min.js", "uPlot.LICENSE.txt"):
        assert c.http.get(f"/api/static/{asset}").status_code == 200, asset
    assert b"MIT" in c.http.get("/api/static/uPlot.LICENSE.txt").content


HOSTILE_GETS = [
    ("/api/runs", {"Host": "evil.example"}, 403, "Host"),
    ("/api/runs", {"Host": "127.0.0.1.evil.example:6007"}, 403, "Host"),
    ("/api/state?run=exp", {"Origin": "http://evil.example"}, 403, "cross-origin"),
    ("/api/state?run=exp", {"Origin": "null"}, 403, "opaque"),
    ("/api/journal?run=exp", {"Sec-Fetch-Site": "cross-site"}, 403, "Sec-Fetch-Site"),
    ("/api/events?run=exp", {"Host": "evil.example"}, 403, "Host"),
    ("/api/events?run=exp", {"Sec-Fetch-Site": "same-site"}, 403, "Sec-Fetch-Site"),
    ("/api/state?run=../exp", {}, 400, "relative name"),
    ("/api/state?run=/etc", {}, 400, "relative name"),
    ("/api/events?run=..%2F..%2Fetc", {}, 400, "relative name"),
    ("/api/events?run=nope", {}, 404, "no run"),
    ("/api/events", {}, 400, "give the run"),
    ("/api/state?run=exp%00", {}, 400, "relative name"),
    ("/api/response?run=exp&id=../../etc/passwd", {}, 400, "command id"),
    ("/api/data?run=exp&tag=loss&format=xml", {}, 400, "format"),
    ("/api/runs", {TOKEN_HEADER: "wrong"}, 403, "wrong"),
    ("/api/events?run=exp", {TOKEN_HEADER: ""}, 403, "cannot tell who"),
]


@pytest.mark.parametrize(("path", "headers", "status", "needle"), HOSTILE_GETS)
def test_hostile_gets_are_refused(tmp_path: Path, path: str, headers: dict[str, str], status: int, needle: str) -> None:
    bridged_run(tmp_path)
    r = Client(tmp_path).get(path, **headers)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]


HOSTILE_POSTS = [
    ({"X-BIDViz-CSRF": ""}, 403, "missing X-BIDViz-CSRF"),
    ({"X-BIDViz-CSRF": "forged"}, 403, "wrong X-BIDViz-CSRF"),
    ({"Content-Type": "text/plain"}, 415, "application/json"),
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"),
    ({"Origin": "http://evil.example"}, 403, "cross-origin"),
    ({"Sec-Fetch-Site": "same-site"}, 403, "Sec-Fetch-Site"),
    ({"Host": "rebound.example"}, 403, "Host"),
]


@pytest.mark.parametrize(("headers", "status", "needle"), HOSTILE_POSTS)
def test_hostile_posts_send_nothing(tmp_path: Path, headers: dict[str, str], status: int, needle: str) -> None:
    run = bridged_run(tmp_path)
    r = Client(tmp_path).post("/api/command", b'{"run": "exp", "kind": "stop", "args": {}}', **headers)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]
    assert not list((run / ".bidviz" / "inbox").iterdir())


@pytest.mark.parametrize(
    "body", [b"[" * 100_000, b'{"run": "exp", "kind": "eval", "args": {"code": "' + b"x" * 300_000 + b'"}}', b"\xff"]
)
def test_hostile_bodies_are_answered_and_send_nothing(tmp_path: Path, body: bytes) -> None:
    run = bridged_run(tmp_path)
    r = Client(tmp_path).post("/api/command", body)
    assert r.status_code in (400, 413), r.text
    assert not list((run / ".bidviz" / "inbox").iterdir())


def test_a_symlink_out_of_the_log_directory_is_refused(tmp_path: Path) -> None:
    outside = bridged_run(tmp_path / "outside", "secret")
    (tmp_path / "logs").mkdir()
    bridged_run(tmp_path / "logs")
    (tmp_path / "logs" / "link").symlink_to(outside)
    c = Client(tmp_path / "logs")
    for path in ("/api/state?run=link", "/api/events?run=link"):
        r = c.get(path)
        assert r.status_code in (403, 404), r.text


def test_runs_are_every_directory_with_event_files_or_a_mailbox(tmp_path: Path) -> None:
    """The walk behind `GET runs`: nested runs, the log directory itself, no hidden or symlinked directory entered,
    and each row's status read where a mailbox is (a corrupt state.json says so in its row only)."""
    from bidviz.channel import Mailbox

    logdir = tmp_path / "logs"
    bridged_run(logdir, "a")
    bridged_run(logdir, "a/nested")
    with EventWriter(logdir) as w:  # the log directory's own event file: the run "."
        w.add_scalar("x", 1.0, 0)
    with EventWriter(logdir / "plain") as w:
        w.add_scalar("x", 1.0, 0)
    (logdir / "empty" / "deeper").mkdir(parents=True)  # no event file, no mailbox: not a run
    bridged_run(logdir, ".hidden/run")  # hidden: never entered
    bridged_run(tmp_path, "elsewhere")
    (logdir / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)  # not followed
    (logdir / "filebox").mkdir()
    (logdir / "filebox" / ".bidviz").write_text("not a directory")  # a mailbox in name: listed, refused in its row
    corrupt = bridged_run(logdir, "corrupt")
    (corrupt / ".bidviz" / "state.json").write_text("{not json")
    Mailbox(logdir / "a").write_state({"v": 1, "pid": 1, "host": "elsewhere", "heartbeat": 1.0, "step": 7})
    rows = {r["run"]: r for r in Client(logdir).get("/api/runs").json()["runs"]}
    assert list(rows) == [".", "a", "a/nested", "corrupt", "filebox", "plain"]
    assert rows["a"]["step"] == 7 and rows["a"]["live"] == "stale" and rows["a"]["controllable"] is True
    assert rows["a/nested"]["live"] == "none" and rows["a/nested"]["controllable"] is True
    assert rows["plain"] == {**rows["plain"], "live": "none", "controllable": False, "step": None}
    assert rows["corrupt"]["live"] == "unreadable" and "corrupt" in rows["corrupt"]["problem"]
    assert rows["filebox"]["live"] == "unreadable" and "real directory" in rows["filebox"]["problem"]
    assert not rows["filebox"]["controllable"] and not rows["corrupt"]["controllable"]


def test_a_client_that_stops_reading_is_dropped_not_buffered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One run's feed with two clients while its event file grows: the one that never reads is dropped once its
    queue is full (told so when it reads again, its stream then ends), the other keeps receiving every point."""
    import asyncio

    from bidviz.tb_plugin import live

    monkeypatch.setattr(live, "QUEUE_MAX", 16)
    run = bridged_run(tmp_path)
    writer = EventWriter(run, flush_secs=0)

    async def follow() -> None:
        feed = live.Hub().feed("exp", run)
        stalled, reader = await feed.subscribe(), await feed.subscribe()
        steps: list[int] = []

        async def read() -> None:
            async for frame in reader.frames():
                if frame.startswith(b"event: scalars"):
                    steps.extend(p[0] for p in json.loads(frame.split(b"data: ", 1)[1])["points"].get("loss", []))

        task = asyncio.get_running_loop().create_task(read())
        step = 5
        while not (stalled.dropped and step > 5 + 3 * live.QUEUE_MAX):
            writer.add_scalar("loss", 0.5, step)
            step += 1
            await asyncio.sleep(live.INTERVAL * 1.5)  # about a look each: one event per point
            assert step < 5 + 50 * live.QUEUE_MAX, "the client that does not read was never dropped"
        assert stalled not in feed.clients and stalled.queue.qsize() == 1  # bounded: only the end of its stream
        frames = [frame async for frame in stalled.frames()]
        assert len(frames) == 1 and frames[0].startswith(b"event: dropped")
        while not steps or steps[-1] < step - 1:
            await asyncio.sleep(live.INTERVAL)
        assert steps == list(range(step)), "the reading client got every point, in order"
        task.cancel()
        feed.unsubscribe(reader)

    asyncio.run(asyncio.wait_for(follow(), 60))
    writer.close()


# -- a real server ------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_serve(procs: list[Proc], tmp_path: Path, logdir: Path, *args: str) -> tuple[Proc, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "bidviz", "serve", "--logdir", str(logdir), "--port", str(port), *args]
    p = Proc(cmd, tmp_path / f"serve-{len(procs)}.log", clean_env())
    procs.append(p)
    p.wait_output(r"BIDViz serves")
    host = args[args.index("--host") + 1] if "--host" in args else "127.0.0.1"

    def answers() -> bool:
        try:
            return request(f"http://{host}:{port}/")[0] == 200
        except OSError:
            return False

    wait_for(answers, "bidviz serve to answer", 30)
    return p, str(port)


def read_events(url: str, headers: dict[str, str], until: Any, timeout: float = 20) -> list[tuple[str, Any]]:
    """Read an SSE stream until `until(events)` holds."""
    events: list[tuple[str, Any]] = []
    req = urllib.request.Request(url, headers=headers)
    deadline = time.monotonic() + timeout
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        name = ""
        while not until(events):
            assert time.monotonic() < deadline, f"stream ended without what was awaited: {events[-3:]}"
            line = resp.readline().decode()
            if line.startswith("event: "):
                name = line[7:].strip()
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    return events


def test_live_stream_of_a_training_run_carries_its_points_state_and_journal(
    tmp_path: Path, procs: list[Proc], start_training: Any
) -> None:
    logdir = tmp_path / "runs"
    run = logdir / "live"
    start_training(run)
    _, port = start_serve(procs, tmp_path, logdir)
    url = f"http://127.0.0.1:{port}"
    status, _ = request(f"{url}/api/runs")
    assert status == 200  # this user's own loopback connection: the kernel vouches, no token needed

    def has_lr(events: list[tuple[str, Any]]) -> bool:
        return any(n == "scalars" and "hparams/lr" in d["points"] for n, d in events)

    # The snapshot (state, journal, the points written so far), then the points as the writer flushes them.
    events = read_events(f"{url}/api/events?run=live", {}, lambda ev: len(ev) >= 3 and has_lr(ev))
    assert [n for n, _ in events[:3]] == ["state", "journal", "scalars"]
    assert events[0][1]["live"] == "live"
    status, body = request(
        f"{url}/api/command",
        json.dumps({"run": "live", "kind": "set_hparam", "args": {"name": "lr", "value": 0.05}}).encode(),
        {"Content-Type": "application/json", "X-BIDViz-CSRF": request(f"{url}/api/csrf")[1]["token"]},
    )
    assert status == 200, body
    streamed: dict[str, list[Any]] = {}

    def done(events: list[tuple[str, Any]]) -> bool:
        for name, data in events[len(done.seen) :]:
            if name == "scalars":
                for tag, points in data["points"].items():
                    streamed.setdefault(tag, []).extend(points)
        done.seen = list(events)
        journal = [e for n, d in events if n == "journal" for e in d["entries"]]
        return any(e.get("outcome") == "lr 0.1 → 0.05" and e["who"].endswith("(serve)") for e in journal) and any(
            p[2] == pytest.approx(0.05) for p in streamed.get("hparams/lr", [])
        )

    done.seen = []  # type: ignore[attr-defined]
    read_events(f"{url}/api/events?run=live", {}, done)
    on_disk = read_scalars(run)
    for tag, points in streamed.items():  # the stream's points are the event files' points, in order
        assert [tuple(p) for p in points] == [tuple(p) for p in on_disk[tag][: len(points)]], tag


def test_a_non_loopback_bind_needs_the_token_everywhere(tmp_path: Path, procs: list[Proc]) -> None:
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to bind")
    bridged_run(tmp_path)
    serve, port = start_serve(procs, tmp_path, tmp_path, "--host", address)
    token = serve.wait_output(r"#token=(\S+)").group(1)
    url = f"http://{address}:{port}"
    assert request(f"{url}/")[0] == 200  # the page holds no secret: it reads the token from the link
    for path in ("/api/runs", "/api/state?run=exp", "/api/events?run=exp", "/api/csrf"):
        status, body = request(url + path)
        assert status == 403 and TOKEN_HEADER in body["error"], (path, body)
        assert request(url + path, headers={TOKEN_HEADER: token + "x"})[0] == 403
    assert request(f"{url}/api/runs", headers={TOKEN_HEADER: token})[0] == 200
    # Even this user's own connection needs it there: the token, not the peer, guards an exposed server.
    local = f"http://127.0.0.1:{port}"
    with pytest.raises(OSError):
        urllib.request.urlopen(local + "/api/runs", timeout=2)  # bound to the address only: nothing on loopback
    events = read_events(f"{url}/api/events?run=exp", {TOKEN_HEADER: token}, lambda ev: len(ev) >= 3)
    assert [n for n, _ in events[:3]] == ["state", "journal", "scalars"]
