"""Clocks for driving an agent from a test (the agent's ``Clock`` protocol)."""

from __future__ import annotations

import threading


class FixedClock:
    """Stands still until the test sets ``t``; waiting never passes time."""

    def __init__(self, t: float) -> None:
        self.t = t

    def time(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t

    def wait(self, event: threading.Event, timeout: float) -> bool:
        return event.is_set()
