"""Part 1b: hostile bodies for `POST command`, through the plugin's framework-free core (`ControlPlane.command`)
over a real log directory with a live bridge. A body is either refused with a 4xx error (an exception carrying
`http_status`) or becomes one command file, which the bridge answers once; never another exception."""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from proof_cases import HOSTILE_VALUES, SAFE_KINDS, SECRET, TEXT, WRONG_KINDS, Raw, encode, to_bytes
from proof_helpers import Figures, JournalReader, Trainer, dump_list, pick, report, wait_responses

from bidviz import protocol

BODIES = pick(300, 3000)
RUN = "run"


class Plane:
    def __init__(self, root: Path) -> None:
        from bidviz.tb_plugin.core import ControlPlane, DirectoryRuns

        self.trainer = Trainer(root / RUN, env={"BIDVIZ_SECRET": SECRET})
        self.plane = ControlPlane(str(root), DirectoryRuns(root), secret=SECRET)
        self.root = root
        self.accepted: dict[str, str] = {}  # id -> the token its eval appends ("" for other commands)
        self.statuses: collections.Counter[int] = collections.Counter()
        self.figures = Figures("fuzz-http")
        self.started = time.monotonic()

    def post(self, body: bytes, token: str = "") -> None:
        self.figures.tried += 1
        try:
            out = self.plane.command(body, sender="http:proof")
        except Exception as e:  # noqa: BLE001 - told apart below: only a 4xx refusal is an answer
            status = getattr(e, "http_status", None)
            if not isinstance(status, int) or not 400 <= status < 500:
                self.figures.crashed += 1
                raise AssertionError(f"{body[:300]!r} raised {type(e).__name__}: {e} (http_status {status})") from e
            self.statuses[status] += 1
            self.figures.answered += 1
            return
        assert protocol.is_command_id(out.get("id")), out
        self.statuses[200] += 1
        self.accepted[out["id"]] = token


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Any:
    p = Plane(tmp_path_factory.mktemp("http"))
    yield p
    p.figures.seconds = time.monotonic() - p.started
    p.figures.notes.update({f"http_{k}": n for k, n in sorted(p.statuses.items())})
    report(p.figures)
    p.trainer.kill9()


RUNS = (
    st.sampled_from(
        [RUN, "", ".", "..", "../run", "run/..", "/run", "run\x00", "\ud800", "run/", "RUN", " run", "./run", "run/."]
    )
    | st.just(RUN)
    | HOSTILE_VALUES
)
KINDS = st.sampled_from(SAFE_KINDS + WRONG_KINDS + ["stop\n", "pause "]) | HOSTILE_VALUES
ARG_KEYS = st.sampled_from(["code", "name", "value", "values", "now", "every", "kind", "replace"]) | TEXT
# `args` that is neither an object nor null is left to test_args_that_are_not_an_object_are_refused_with_a_400.
ARGS = st.none() | st.dictionaries(ARG_KEYS, HOSTILE_VALUES, max_size=4)
FIELDS = st.fixed_dictionaries({}, optional={"run": RUNS, "kind": KINDS, "args": ARGS, "extra": HOSTILE_VALUES})


@st.composite
def bodies(draw: Any) -> bytes:
    what = draw(st.integers(0, 9))
    if what == 0:
        return draw(st.binary(max_size=300))
    if what == 1:
        return draw(
            st.sampled_from(
                [
                    b"",
                    b"[" * 100_000,
                    b'{"run":' * 50_000,
                    b'{"run": "run", "kind": "eval", "args": {"code": NaN}}',
                    b'{"run": "run", "kind": "set_hparam", "args": {"name": "lr", "value": 1' + b"0" * 5000 + b"}}",
                    b'{"run": "run", "kind": "eval", "args": {"code": "' + b"x" * 600_000 + b'"}}',
                    b"\xef\xbb\xbf{}",
                    b'{"run": "\xed\xa0\x80"}',
                ]
            )
        )
    obj = draw(FIELDS)
    if obj.get("kind") in ("stop", "pause"):  # valid ones would end or hold training, which must go on here
        obj["kind"] = "resume"
    return to_bytes(encode(obj, draw(st.booleans())))


@settings(
    max_examples=BODIES,
    deadline=None,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=list(HealthCheck),
)
@given(body=bodies())
def test_a_hostile_body_is_a_4xx_or_one_command(plane: Plane, body: bytes) -> None:
    plane.post(body)


def test_valid_bodies_are_applied_once(plane: Plane) -> None:
    for n in range(pick(20, 200)):
        token = f"http-{n}"
        args: dict[str, Any] = {"code": f"applied.append({token!r})"}
        plane.post(json.dumps({"run": RUN, "kind": "eval", "args": args}).encode(), token)
    plane.post(encode({"run": RUN, "kind": "set_hparam", "args": {"name": "lr", "value": Raw("0.5")}}).encode())


def test_every_accepted_command_is_answered_once_and_training_goes_on(plane: Plane) -> None:
    t, figures = plane.trainer, plane.figures
    step = t.wait_step_past(None)
    got = wait_responses(t.mailbox, set(plane.accepted), 60)
    figures.answered += len(got)
    figures.lost += len(plane.accepted) - len(got)
    journal = JournalReader(t.mailbox)
    journal.new_entries()
    twice = [cid for cid in plane.accepted if journal.commands[cid] != 1]
    figures.double += len(twice)
    assert len(got) == len(plane.accepted), f"no response to {sorted(set(plane.accepted) - set(got))[:5]}"
    assert not twice, f"not exactly one journal line: {twice[:5]}"
    applied = collections.Counter(dump_list(t.mailbox, "applied", plane.root / "applied.json", secret=SECRET))
    tokens = {tok for tok in plane.accepted.values() if tok}
    assert set(applied) == tokens and all(n == 1 for n in applied.values()), applied
    assert t.state()["hparams"]["lr"]["value"] == 0.5
    t.wait_step_past(step)
    if not t.alive():
        figures.crashed += 1


@pytest.mark.parametrize("args", [[1, 2], "ab", [["code", "1"]]])
def test_args_that_are_not_an_object_are_refused_with_a_400(plane: Plane, args: Any) -> None:
    body = json.dumps({"run": RUN, "kind": "eval", "args": args}).encode()
    try:
        plane.plane.command(body, sender="http:proof")
    except Exception as e:  # noqa: BLE001
        assert getattr(e, "http_status", None) == 400, f"{type(e).__name__}: {e}"
    else:
        raise AssertionError("accepted")
