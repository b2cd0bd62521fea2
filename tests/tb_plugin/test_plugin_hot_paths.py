"""The routes that a tab polls, read incrementally (issue 12), through TensorBoard's real WSGI app over real files:
`GET journal` read from the journal's end (and `since=` its version: unchanged without reading), `GET data` kept
between requests (only appended points read and encoded), `GET runs` over many runs. Their answers must be exactly
what a full read gives."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from tab_support import wsgi_app
from werkzeug.test import Client

from bidviz.channel import Mailbox
from bidviz.series import point_dicts, read_series, to_csv
from bidviz.tb_plugin.control_token import TOKEN_HEADER, ensure_token
from bidviz.tb_plugin.core import slim_entry
from bidviz.writers import EventWriter

P = "/data/plugin/bidviz"


def get(client: Client, route: str) -> tuple[int, Any, bytes]:
    r = client.get(P + route, headers={"Sec-Fetch-Site": "same-origin", TOKEN_HEADER: ensure_token()})
    data = r.get_data()
    body = json.loads(data) if r.mimetype == "application/json" else data
    return r.status_code, body, data


def make_run(logdir: Path, name: str = "run") -> tuple[Path, EventWriter]:
    run = logdir / name
    writer = EventWriter(run, flush_secs=0)
    writer.add_scalar("loss", 1.0, 0)
    return run, writer


def test_journal_is_read_from_its_end_and_unchanged_costs_a_stat(tmp_path):
    run, writer = make_run(tmp_path)
    mailbox = Mailbox(run)
    mailbox.create()
    for i in range(3000):
        mailbox.append_journal({"time": i, "step": i, "event": "metric_error", "metric": "m", "n": i})
        if i % 500 == 7:  # hand edits and cut lines anywhere: skipped, as a full read skips them
            with open(mailbox.journal_path, "ab") as f:
                f.write(b'{"event": "cut\n[1, 2]\n\n' + "é".encode() * 3000 + b"\n")
    with open(mailbox.journal_path, "ab") as f:
        f.write(b'{"time": 1, "event": "command", "id": "x", "kind": "pau')  # a line still being written
    client = Client(wsgi_app(tmp_path))
    expected = [slim_entry(e) for e in mailbox.iter_journal()]
    for limit in (1, 200, 10_000):
        status, body, _ = get(client, f"/journal?run=run&limit={limit}")
        assert status == 200, body
        assert body["entries"] == expected[-limit:]
    version = body["version"]
    status, body, raw = get(client, f"/journal?run=run&limit=10000&since={version}")
    assert (status, body) == (200, {"run": "run", "version": version, "unchanged": True})
    with open(mailbox.journal_path, "ab") as f:
        f.write(b"\n")  # the cut line ends (and does not parse)
    mailbox.append_journal({"time": 0, "step": 3000, "event": "command", "id": "y", "kind": "pause", "status": "x"})
    status, body, _ = get(client, f"/journal?run=run&limit=2&since={version}")
    assert body["version"] != version and [e["step"] for e in body["entries"]] == [2999, 3000]
    assert body["entries"][-1]["label"] == "pause"
    status, body, _ = get(client, "/journal?run=run&limit=-5")
    assert status == 200 and len(body["entries"]) == 1, "a limit below 1 is 1"
    status, body, _ = get(client, "/journal?run=run&since=../../etc")
    assert status == 200 and "entries" in body, "a foreign version is just not this one"
    writer.close()


def test_a_run_without_a_journal_has_no_entries(tmp_path):
    run, writer = make_run(tmp_path)
    Mailbox(run).create()
    status, body, _ = get(Client(wsgi_app(tmp_path)), "/journal?run=run")
    assert status == 200 and body["entries"] == [] and body["version"].startswith("none")
    writer.close()


def test_data_is_kept_between_requests_and_grows_with_the_file(tmp_path):
    run, writer = make_run(tmp_path)
    app = wsgi_app(tmp_path)
    client = Client(app)
    values = [0.5, math.nan, math.inf, -math.inf, 1e-310, -0.0, 1e300]
    for rnd in range(3):
        for i in range(1, 400):
            writer.add_scalar("loss", values[i % len(values)] * i, rnd * 1000 + i)
            writer.add_scalar("a b/c", float(i), rnd * 1000 + i)
        for tag, quoted in (("loss", "loss"), ("a b/c", "a%20b%2Fc")):
            series, _ = read_series(run)
            status, body, raw = get(client, f"/data?run=run&tag={quoted}&format=json")
            full = {"run": "run", "tag": tag, "points": point_dicts(series[tag])}
            assert status == 200
            assert raw == json.dumps(full, separators=(",", ":")).encode(), "byte for byte what a full read encodes"
            assert len(body["points"]) == len(series[tag])
            status, _, csv_bytes = get(client, f"/data?run=run&tag={quoted}&format=csv")
            assert status == 200 and csv_bytes == to_csv({tag: series[tag]}, [tag], tag_column=False).encode()
    status, body, _ = get(client, "/data?run=run&tag=nope")
    assert status == 404 and "loss" in body["error"]
    app.reload()  # the tags come from TensorBoard's data provider
    status, body, _ = get(client, "/tags?run=run")
    assert status == 200 and body["tags"] == ["a b/c", "loss"]
    writer.close()


def test_a_rewritten_event_file_is_read_again(tmp_path):
    run, writer = make_run(tmp_path)
    for i in range(1, 100):
        writer.add_scalar("loss", float(i), i)
    client = Client(wsgi_app(tmp_path))
    status, body, _ = get(client, "/data?run=run&tag=loss")
    assert len(body["points"]) == 100
    writer.close()
    with open(writer.path, "r+b") as f:  # cut to its first records: not appended to, rewritten
        f.truncate(os.path.getsize(writer.path) // 3)
    status, body, _ = get(client, "/data?run=run&tag=loss")
    series, _ = read_series(run)
    assert status == 200 and 0 < len(body["points"]) == len(series["loss"]) < 100, "what a full read gives"


def test_runs_lists_many_runs_each_resolved(tmp_path):
    writers = [make_run(tmp_path, f"r{i:04d}")[1] for i in range(300)]
    Mailbox(tmp_path / "r0007").create()
    status, body, _ = get(Client(wsgi_app(tmp_path)), "/runs")
    assert status == 200
    rows = {r["run"]: r for r in body["runs"]}
    assert sorted(rows) == [f"r{i:04d}" for i in range(300)]
    assert rows["r0007"]["controllable"] is True and rows["r0008"]["controllable"] is False
    assert not any("problem" in r for r in rows.values())
    for w in writers:
        w.close()
