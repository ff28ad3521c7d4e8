"""Read ahead: iterate a generator in a background thread so that its I/O overlaps the consumer's GPU work.

``weights_reports`` walks ΔW module by module; reading a module from safetensors and copying it to the GPU
(~100 MB in float64) would otherwise sit between two modules' eigendecompositions. torch releases the GIL in
both, so one thread suffices. Errors raised by the generator re-raise in the consumer, at the same position.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any


class Prefetched:
    """``next()`` returns the items of ``items`` mapped by ``transform``, read ``depth`` ahead; None at the end.
    ``close()`` stops the thread early (it is a daemon, so an abandoned one never blocks exit)."""

    _END = object()

    def __init__(self, items: Iterable[Any], transform: Callable[[Any], Any] = lambda x: x, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(iter(items), transform), daemon=True)
        self._thread.start()

    def _put(self, value: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, it: Iterator[Any], transform: Callable[[Any], Any]) -> None:
        try:
            for item in it:
                if not self._put(transform(item)):
                    return
        except BaseException as exc:  # noqa: BLE001 — handed to the consumer, raised there
            self._put(exc)
            return
        self._put(self._END)

    def next(self) -> Any | None:
        value = self._queue.get()
        if value is self._END:
            self._queue.put(value)  # stay exhausted
            return None
        if isinstance(value, BaseException):
            raise value
        return value

    def close(self) -> None:
        self._stop.set()
