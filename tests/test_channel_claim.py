"""The claim on a command file against its sender's withdrawal, raced for real: the bridge's `Mailbox.claim` in one
process, the sender's `Mailbox.withdraw` in another, on the same file at the same moment, many times over. Whatever
the order, the command is the bridge's (claimed: answered) or the sender's (withdrawn: never answered), never both.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bidviz import protocol
from bidviz.channel import Mailbox

ROUNDS = 1000
SPREAD = 60  # each side waits 0..SPREAD spins before its move, so each wins some rounds and many meet mid-call


def _bridge(run: str, ready: Any, go: Any, pipe: Connection) -> None:
    """The bridge's side: claim each file named on `pipe` as soon as its round starts (`go`); report what claim gave."""
    mailbox = Mailbox(run)
    while (job := pipe.recv()) is not None:
        name, round_ = job
        ready.value = round_
        while go.value != round_:  # spin: a sleep or a pipe would put tens of microseconds between the two sides
            pass
        for _ in range(random.randrange(SPREAD)):
            pass
        source = mailbox.claim(name)
        pipe.send(None if source is None else str(source))


def test_a_late_link_after_the_senders_withdrawal_is_no_claim(tmp_path: Path) -> None:
    """link(2) finds its source before it links: a link that starts before the sender's rename out of the inbox can
    land after it, on the withdrawn file. That is no claim when the sender saw the file alone (it said withdrawn, so
    the bridge must not answer), and the bridge's claim when the sender saw the link (it said claimed: the bridge
    holds it, as it was when claimed, not to be read again later)."""
    mailbox = Mailbox(tmp_path / "run")
    mailbox.create()
    ctx = mp.get_context("spawn")
    ready, go = ctx.Value("i", 0, lock=False), ctx.Value("i", 0, lock=False)
    ours, theirs = ctx.Pipe()
    bridge = ctx.Process(target=_bridge, args=(str(mailbox.run_dir), ready, go, theirs), daemon=True)
    bridge.start()
    fates: dict[tuple[bool, str], int] = {}
    both: list[str] = []
    told_claimed_not_held: list[str] = []
    try:
        for i in range(1, ROUNDS + 1):
            command = protocol.make_command("pause", {}, sender="test:race")
            name = protocol.inbox_name(command.id, command.sent_at)
            mailbox.send(command)
            ours.send((name, i))
            while ready.value != i:
                pass
            go.value = i
            for _ in range(random.randrange(SPREAD)):
                pass
            fate = mailbox.withdraw(command)
            source = ours.recv()
            claimed = source is not None
            fates[(claimed, fate)] = fates.get((claimed, fate), 0) + 1
            in_inbox = (mailbox.inbox / name).exists()
            if fate == "withdrawn" and (claimed or in_inbox or mailbox.claim_path(name).exists()):
                both.append(f"{name}: withdrawn, yet claimed through {source} (in the inbox: {in_inbox})")
            elif fate == "claimed" and not in_inbox:
                both.append(f"{name}: the sender was told claimed, but the file left the inbox ({source})")
            elif fate == "claimed" and not claimed:  # let go, it would be read later: past its expiry, say
                told_claimed_not_held.append(name)
            assert fate != "answered", "no response was written: nothing can be answered"
            mailbox.unclaim(name)  # what answering does, so the next round starts clean
            mailbox.remove_command(name)
        ours.send(None)
        bridge.join(30)
    finally:
        if bridge.is_alive():
            bridge.kill()
    assert not both, f"{len(both)} of {ROUNDS} commands were both withdrawn and claimed ({fates}): {both[:5]}"
    assert not told_claimed_not_held, f"{len(told_claimed_not_held)} told claimed, not held by the bridge ({fates})"
    assert fates.get((False, "withdrawn")) and fates.get((True, "claimed")), f"one side never won: {fates}"
    assert not os.listdir(mailbox.inbox) and not [n for n in os.listdir(mailbox.tmp) if n.startswith("claim-")]
