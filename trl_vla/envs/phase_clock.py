"""`PhaseClock`: where an environment's wall-clock time goes, phase by phase, measured inside the environment.

A simulator step is many nested calls (robosuite's step runs the controller, which runs MuJoCo's forward pass; an
observable update may render a camera). The clock charges every interval to the *innermost* phase running, so the
phases add up to the time measured, with nothing counted twice:

```
clock = PhaseClock()
sim.step = clock.timed("physics", sim.step)     # every call of the wrapped function is charged to "physics"
with clock.phase("render"):                      # or a block
    ...
clock.take()  # -> {"physics": 0.013, "render": 0.08}: seconds since the last take(), per phase (then reset)
```

Time spent inside the clock's outermost `phase` blocks that no inner phase claims is charged to that outer phase;
time outside every phase is not counted. The overhead is two `perf_counter` calls per phase change (about 0.2 us).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any


__all__ = ["PhaseClock"]


class PhaseClock:
    """Exclusive wall-clock time per phase (see the module's docstring)."""

    def __init__(self):
        self._totals: collections.Counter[str] = collections.Counter()
        self._stack: list[str] = []
        self._mark = 0.0

    def enter(self, name: str) -> None:
        """Start phase `name` (inside the current one, which stops counting until `exit`)."""
        now = time.perf_counter()
        if self._stack:
            self._totals[self._stack[-1]] += now - self._mark
        self._stack.append(name)
        self._mark = now

    def exit(self) -> None:
        """End the innermost phase (the one it interrupted counts again)."""
        now = time.perf_counter()
        self._totals[self._stack.pop()] += now - self._mark
        self._mark = now

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Charge the block's time (less its inner phases') to `name`."""
        self.enter(name)
        try:
            yield
        finally:
            self.exit()

    def timed(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """`function`, with each call charged to phase `name`."""

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            self.enter(name)
            try:
                return function(*args, **kwargs)
            finally:
                self.exit()

        return wrapper

    def take(self) -> dict[str, float]:
        """Seconds per phase since the last `take()`, and start counting afresh. A phase still running is charged up
        to now and keeps running."""
        if self._stack:
            now = time.perf_counter()
            self._totals[self._stack[-1]] += now - self._mark
            self._mark = now
        totals, self._totals = dict(self._totals), collections.Counter()
        return totals
