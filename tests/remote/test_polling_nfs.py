"""The network-file-system case: a run whose inbox raises no file-system events (NFS, SMB, FUSE: another machine's
writes are never seen by inotify here). Such a run is found from /proc/self/mountinfo, or named with
`poll_interval=`; its bridge then watches nothing and lists the inbox every period, with the same guarantees: a
training process on a local directory with events off, concurrent senders and the CLI, each command answered once.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from bidviz import protocol
from bidviz.channel import Mailbox
from bidviz.mailfiles import NETWORK_POLL_SECONDS, network_filesystem

HERE = Path(__file__).resolve().parent

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /mnt/shared rw,relatime shared:20 - nfs4 fileserver:/export rw,vers=4.2
41 40 0:36 / /mnt/shared/local rw,relatime - ext4 /dev/sdb1 rw
42 22 0:37 / /home/me/remote\\040box rw,nosuid - fuse.sshfs me@box:/data rw,user_id=1000
43 22 0:38 / /mnt/win rw - cifs //nas/share rw
44 22 0:39 / /mnt/usb rw - fuseblk /dev/sdc1 rw
45 22 0:40 / /mnt/stack rw - ext4 /dev/sdd1 rw
46 45 0:41 / /mnt/stack rw - nfs server:/s rw
"""


def test_network_file_systems_are_found_from_mountinfo(tmp_path: Path) -> None:
    def kind(path: str) -> str | None:
        return network_filesystem(path, MOUNTINFO)

    assert kind("/mnt/shared/runs/exp/.bidviz/inbox") == "nfs4"
    assert kind("/mnt/shared") == "nfs4"
    assert kind("/mnt/shared/local/runs") is None  # a local disk mounted inside the NFS share
    assert kind("/mnt/sharedness/runs") is None  # a name that only begins like the mount point
    assert kind("/home/me/remote box/runs") == "fuse.sshfs"  # mountinfo writes the space as \040
    assert kind("/mnt/win/runs") == "cifs"
    assert kind("/mnt/usb/runs") is None  # fuseblk: a local disk through FUSE (ntfs-3g)
    assert kind("/mnt/stack/runs") == "nfs"  # two mounts on one point: the later one is on top
    assert kind("/home/me/runs") is None
    assert network_filesystem(tmp_path, "garbage\n\n1 2 3 - \n") is None  # unreadable lines are skipped
    assert Mailbox(tmp_path / "run").rescan_seconds(None) in (None, NETWORK_POLL_SECONDS)
    assert Mailbox(tmp_path / "run").rescan_seconds(0.3) == 0.3


def _inotify_fds(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify"
        except OSError:
            continue
    return n


def _start(run: Path, ledger: Path, poll: str) -> tuple[subprocess.Popen[str], threading.Thread]:
    cmd = [sys.executable, str(HERE / "remote_trainer.py"), str(run), "--ledger", str(ledger), "--poll", poll]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("READY"):
            break
    assert lines and lines[-1].startswith("READY"), "".join(lines)
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    return proc, reader


def _end(proc: subprocess.Popen[str], reader: threading.Thread) -> None:
    proc.kill()
    proc.wait(30)
    reader.join(10)
    proc.stdout.close()  # type: ignore[union-attr]


def test_a_run_without_events_is_served_by_listing_each_command_answered_once(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    # The control: with events, the bridge holds an inotify instance (so the check below can see one).
    proc, reader = _start(tmp_path / "events", ledger, "none")
    try:
        mailbox = Mailbox(tmp_path / "events")
        assert mailbox.read_state()["inbox_watch"] == "events"  # type: ignore[index]
        assert _inotify_fds(proc.pid) >= 1
    finally:
        _end(proc, reader)

    run = tmp_path / "nfs"
    proc, reader = _start(run, ledger, "0.3")
    mailbox = Mailbox(run)
    try:
        assert mailbox.read_state()["inbox_watch"] == "listing every 0.3s"  # type: ignore[index]
        assert _inotify_fds(proc.pid) == 0, "a bridge told to poll watches no events"

        sent: dict[str, str] = {}
        lock = threading.Lock()

        def sender(who: int) -> None:
            box = Mailbox(run)
            for i in range(15):
                token = f"s{who}-{i}"
                code = f"open(ledger, 'a').write({token + chr(10)!r})\n{token!r}"
                cid = box.send(protocol.make_command("eval", {"code": code}, sender=f"test:{who}"))
                with lock:
                    sent[cid] = token
                time.sleep(0.01 * (who + 1))

        threads = [threading.Thread(target=sender, args=(w,)) for w in range(4)]
        started = time.monotonic()
        for t in threads:
            t.start()
        cli = subprocess.run(
            [sys.executable, "-m", "bidviz", "set", str(run), "lr=0.3"], capture_output=True, text=True, timeout=90
        )
        for t in threads:
            t.join()
        assert cli.returncode == 0, cli.stderr
        responses = {cid: mailbox.wait_response(cid, 30) for cid in sent}
        took = time.monotonic() - started
        assert all(r is not None and r["status"] == "applied" for r in responses.values()), responses
        assert all(r["result"] == sent[cid] for cid, r in responses.items())  # type: ignore[index]
        tokens = collections.Counter(ledger.read_text().split())
        assert sorted(tokens) == sorted(sent.values()) and set(tokens.values()) == {1}, "each eval ran once"
        lines_per_id = collections.Counter(e.get("id") for e in mailbox.iter_journal() if e.get("event") == "command")
        assert all(lines_per_id[cid] == 1 for cid in sent) and len(lines_per_id) == len(sent) + 1
        assert os.listdir(mailbox.inbox) == []
        assert took < 60, f"60 commands took {took:.1f}s"
        assert mailbox.read_state()["hparams"]["lr"]["value"] == 0.3  # type: ignore[index]
    finally:
        _end(proc, reader)
