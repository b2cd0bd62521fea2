"""The handoff between the mailroom (the producer) and the training thread (the consumer): admitted commands in
admission order, and an event a paused training thread waits on."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

from .admission import Admitted


class Handoff:
    def __init__(self) -> None:
        self._items: collections.deque[Admitted] = collections.deque()
        self.arrived = threading.Event()
        self.on_put: Callable[[], None] | None = None  # tells the training thread's fast path to look

    def put(self, item: Admitted) -> None:
        self._items.append(item)
        self.arrived.set()
        if self.on_put is not None:
            self.on_put()

    def take(self) -> Admitted | None:
        try:
            return self._items.popleft()
        except IndexError:
            return None

    def put_back(self, items: list[Admitted]) -> None:
        """Items taken but not applied (the loop was interrupted): first again, in their order."""
        self._items.extendleft(reversed(items))

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)
