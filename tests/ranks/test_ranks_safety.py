"""The safety net on a 2-rank gloo job: the leader's guard trip becomes a pause that holds every rank at the same
step, and a rewind restores every rank's own snapshot at the same step (each rank's lr comes back)."""

from __future__ import annotations

import time

from test_ranks import Job, jobs  # noqa: F401 - the fixture


def test_a_guard_trip_and_a_rewind_reach_every_rank_at_the_same_step(jobs, tmp_path):  # noqa: F811
    job: Job = jobs(tmp_path / "run", 2)
    job.wait_steps(5)
    change = job.call("set_hparam", name="lr", value=1e6)
    assert change["status"] == "applied", change
    deadline = time.monotonic() + 30
    while not (job.mailbox.read_state() or {}).get("paused"):
        assert time.monotonic() < deadline, "the guard did not pause the job"
        time.sleep(0.05)
    state = job.mailbox.read_state()
    trip = state["guard"]["tripped"]
    assert trip["active"] and trip["snapshot"]["command"] == change["id"]
    time.sleep(1.0)
    held = [job.log(k)[-1]["step"] for k in range(2)]
    time.sleep(0.5)
    assert [job.log(k)[-1]["step"] for k in range(2)] == held and held[0] == held[1], "both held at one step"

    rewound = job.call("rewind", before=change["id"])
    assert rewound["status"] == "applied" and rewound["result"]["hparams"] == {"lr": 0.1}, rewound
    job.call("resume")
    job.wait_steps(held[0] + 10)
    for k in range(2):
        after = [e for e in job.log(k) if e["step"] > held[0]]
        assert after and all(e["lr"] == 0.1 for e in after), (k, after[:3])  # each rank restored its own optimizer
    stop = job.call("stop")
    assert [r[0] for r in job.wait()] == [0, 0]
    assert {job.log(k)[-1]["step"] for k in range(2)} == {stop["step"]}
