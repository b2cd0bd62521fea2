"""The watcher thread: wakes on inbox events (watchdog: inotify here, polling where events do not work) and on a
short timer, and hands the inbox's new file names to the bridge. Handlers know nothing about threads."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler

TICK_SECONDS = 0.2
RESCAN_SECONDS = 1.0  # a full listing now and then, for file systems whose events get lost


class _Scan(FileSystemEventHandler):
    """Scans right in watchdog's dispatcher thread: one GIL hand-off fewer than waking another thread."""

    def __init__(self, scan: Callable[[], None]) -> None:
        self._scan = scan

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._scan()


class InboxWatcher:
    """Calls `on_files(names)` with the inbox's sorted file names after each change, and `on_tick()` at least
    every TICK_SECONDS, all from one thread."""

    def __init__(
        self,
        inbox: Path,
        on_files: Callable[[list[str]], None],
        on_tick: Callable[[], None],
        poll_interval: float | None = None,
    ) -> None:
        self.inbox = inbox
        self._on_files = on_files
        self._on_tick = on_tick
        self._poll_interval = poll_interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._observer: Any = None
        self._thread = threading.Thread(target=self._run, name="bidviz-watcher", daemon=True)
        self.last_error: BaseException | None = None

    def start(self) -> None:
        if self._poll_interval is None:
            from watchdog.observers import Observer

            observer: Any = Observer()
        else:
            from watchdog.observers.polling import PollingObserver

            observer = PollingObserver(timeout=self._poll_interval)
        observer.schedule(_Scan(self._scan), str(self.inbox), recursive=False)
        observer.daemon = True
        try:
            observer.start()
        except OSError:  # e.g. inotify limits reached: fall back to polling rather than failing training
            from watchdog.observers.polling import PollingObserver

            observer = PollingObserver(timeout=self._poll_interval or 0.5)
            observer.schedule(_Scan(self._scan), str(self.inbox), recursive=False)
            observer.daemon = True
            observer.start()
        self._observer = observer
        self._wake.set()  # scan once at start: commands sent while no bridge ran
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def _scan(self) -> None:
        if self._stop.is_set():
            return
        try:
            self._on_files(sorted(os.listdir(self.inbox)))
        except Exception as e:  # never let the observer die: report and go on
            self.last_error = e

    def _run(self) -> None:
        last_scan = 0.0
        while not self._stop.is_set():
            woke = self._wake.wait(TICK_SECONDS)
            if self._stop.is_set():
                break
            try:
                now = time.monotonic()
                if woke or now - last_scan >= RESCAN_SECONDS:
                    self._wake.clear()
                    last_scan = now
                    self._on_files(sorted(os.listdir(self.inbox)))
                self._on_tick()
            except Exception as e:  # never let the watcher die: report and go on
                self.last_error = e

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        if self._observer is not None:
            try:
                self._observer.join(timeout=5)
            except RuntimeError:
                pass
