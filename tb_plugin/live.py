"""Live push for `bidviz serve`: one watch per run that someone follows, fanned out to every client as Server-Sent
Events. Framework-free but for asyncio.

A `RunWatch` looks at a run about every `INTERVAL` seconds, in a worker thread: `state.json` (when its size or
mtime changed, and its liveness every `LIVENESS_SECONDS`, since a killed run's file just stops changing), the
journal's new lines (from the offset it read up to), and the event files' new scalar points (`EventTail`: only what
was appended). It keeps what a new client needs first (the state, the journal's last `JOURNAL_KEPT` entries, every
series read so far), so a client that connects gets a snapshot, then each change once, in order, with no gap.

A `Feed` runs one run's watch while it has clients and stops (dropping what the watch holds) when the last leaves.
Each event is encoded once and handed to every client; a client's queue holds at most `QUEUE_MAX` events, and a
client that falls that far behind is dropped (its stream ends; the page reconnects and gets a fresh snapshot), so a
stalled browser costs bounded memory and never slows the others.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from bidviz import protocol
from bidviz.channel import Mailbox
from bidviz.errors import BIDVizError
from bidviz.tb_plugin.core import slim_entry, state_reply
from bidviz.writers.tail import EventTail

__all__ = ["Client", "Feed", "Hub", "RunWatch", "sse"]

INTERVAL = 0.025
LIVENESS_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
QUEUE_MAX = 256
JOURNAL_KEPT = 200
JOURNAL_READ_MAX = 1 << 22  # bytes of new journal lines read per look

Event = tuple[str, dict[str, Any]]


def sse(name: str, data: Any) -> bytes:
    """One Server-Sent Event: `event: NAME` and its JSON on one `data:` line (JSON never holds a raw newline)."""
    return b"event: " + name.encode() + b"\ndata: " + protocol.dumps(data) + b"\n\n"


def _points(points: list[tuple[int, float, float]]) -> list[list[Any]]:
    return [[step, wall, protocol.to_json_value(value)] for step, wall, value in points]


class RunWatch:
    """What changed in one run since the last look, and what a newcomer needs to catch up. Not thread-safe: one
    look at a time (the feed's lock)."""

    def __init__(self, run: str, run_dir: str | os.PathLike[str]) -> None:
        self.run = run
        self.mailbox = Mailbox(run_dir)
        self.tail = EventTail(run_dir)
        self.state: dict[str, Any] | None = None
        self.journal: deque[dict[str, Any]] = deque(maxlen=JOURNAL_KEPT)
        self._state_key: tuple[int, int] | None = None
        self._live_checked = 0.0
        self._journal_offset = 0
        self._problem: str | None = None

    def snapshot(self) -> list[Event]:
        """Everything known so far, as a new client's first events."""
        events: list[Event] = []
        if self.state is not None:
            events.append(("state", self.state))
        events.append(("journal", {"run": self.run, "entries": list(self.journal), "reset": True}))
        series = {tag: _points(points) for tag, points in self.tail.series.items()}
        events.append(("scalars", {"run": self.run, "points": series, "reset": True}))
        return events

    def look(self) -> list[Event]:
        """Read what changed: a `state` event, `journal` entries, new `scalars` points (and `tags` first seen)."""
        events: list[Event] = []
        self._look_state(events)
        entries = self._new_journal_lines()
        if entries:
            self.journal.extend(entries)
            events.append(("journal", {"run": self.run, "entries": entries}))
        try:
            update = self.tail.poll()
        except (OSError, ValueError) as e:
            self._report(events, f"cannot read the event files of {self.run}: {e}")
            return events
        if update.new_tags:
            events.append(("tags", {"run": self.run, "tags": sorted(self.tail.series)}))
        if update:
            events.append(("scalars", {"run": self.run, "points": {t: _points(p) for t, p in update.points.items()}}))
        return events

    def _report(self, events: list[Event], problem: str) -> None:
        if problem != self._problem:
            self._problem = problem
            events.append(("problem", {"run": self.run, "problem": problem}))

    def _look_state(self, events: list[Event]) -> None:
        try:
            st = os.stat(self.mailbox.state_path)
            key: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except OSError:
            key = None
        now = time.monotonic()
        if key == self._state_key and now - self._live_checked < LIVENESS_SECONDS:
            return
        self._live_checked = now
        try:
            if key != self._state_key or self.state is None:
                reply = state_reply(self.run, self.mailbox)
            else:  # only the liveness may have changed (a heartbeat that stopped, a pid that died)
                state = self.state.get("state")
                reply = {**self.state, "live": self.mailbox.liveness(state) if state else "none", "now": time.time()}
                if reply["live"] == self.state["live"]:
                    return
        except BIDVizError as e:  # a corrupt state.json: said once, looked at again when it changes
            self._state_key = key
            self._report(events, str(e))
            return
        self._state_key = key
        self.state = reply
        events.append(("state", reply))

    def _new_journal_lines(self) -> list[dict[str, Any]]:
        try:
            with open(self.mailbox.journal_path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self._journal_offset:  # replaced (compacted): read it again
                    self._journal_offset = 0
                    self.journal.clear()
                if size == self._journal_offset:
                    return []
                f.seek(self._journal_offset)
                data = f.read(JOURNAL_READ_MAX)
        except OSError:
            return []
        end = data.rfind(b"\n") + 1  # a line still being appended waits for its newline
        self._journal_offset += end
        entries = []
        for raw in data[:end].splitlines():
            try:
                entry = json.loads(raw)
            except (ValueError, RecursionError):
                continue  # a crash mid-append leaves one partial line
            if isinstance(entry, dict):
                entries.append(slim_entry(entry))
        return entries


class Client:
    """One SSE connection's queue of encoded events."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_MAX)
        self.dropped = False

    def offer(self, frame: bytes) -> None:
        if self.dropped:
            return
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.dropped = True  # too far behind: end its stream rather than buffer without bound
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(None)

    async def frames(self) -> AsyncIterator[bytes]:
        """The encoded events, a keep-alive comment when nothing happened for a while; ends when dropped."""
        while True:
            try:
                frame = await asyncio.wait_for(self.queue.get(), KEEPALIVE_SECONDS)
            except asyncio.TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if frame is None:
                yield sse("dropped", {"reason": f"this client fell {QUEUE_MAX} events behind; reconnect"})
                return
            yield frame


class Feed:
    """One run's watch, run while the run has clients."""

    def __init__(self, watch: RunWatch, on_idle: Callable[[Feed], None]) -> None:
        self.watch = watch
        self.clients: set[Client] = set()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._on_idle = on_idle

    async def subscribe(self) -> Client:
        client = Client()
        async with self._lock:
            if self._task is None:  # first client: read what is there before the snapshot
                await asyncio.get_running_loop().run_in_executor(None, self.watch.look)
                self._task = asyncio.get_running_loop().create_task(self._run())
            for name, data in self.watch.snapshot():
                client.offer(sse(name, data))
            self.clients.add(client)
        return client

    def unsubscribe(self, client: Client) -> None:
        self.clients.discard(client)
        if not self.clients and self._task is not None:
            self._task.cancel()
            self._task = None
            self._on_idle(self)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(INTERVAL)
            async with self._lock:
                events = await loop.run_in_executor(None, self.watch.look)
                for name, data in events:
                    frame = sse(name, data)
                    for client in list(self.clients):
                        client.offer(frame)
                for client in [c for c in self.clients if c.dropped]:
                    self.clients.discard(client)


class Hub:
    """The feeds of the runs being followed, by run name."""

    def __init__(self) -> None:
        self.feeds: dict[str, Feed] = {}

    def feed(self, run: str, run_dir: str | os.PathLike[str]) -> Feed:
        feed = self.feeds.get(run)
        if feed is None:
            feed = self.feeds[run] = Feed(RunWatch(run, run_dir), self._idle)
        return feed

    def _idle(self, feed: Feed) -> None:
        if self.feeds.get(feed.watch.run) is feed:
            del self.feeds[feed.watch.run]
