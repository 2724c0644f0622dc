"""Progress of a calibrated pruning pass: a tqdm bar when tqdm is installed, else lines on stderr."""

from __future__ import annotations

import sys
import time


class Progress:
    """``total`` steps; :meth:`step` after each; silent when ``enabled`` is False."""

    def __init__(self, total: int, description: str, enabled: bool = True) -> None:
        self.total, self.description, self.enabled = total, description, enabled
        self.done, self.start = 0, time.perf_counter()
        self._bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, desc=description, unit="matrix", file=sys.stderr, leave=False)

    def step(self, name: str) -> None:
        """One more step done (``name`` says which)."""
        self.done += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(name, refresh=False)
            self._bar.update(1)
        else:
            elapsed = time.perf_counter() - self.start
            print(f"{self.description}: {self.done}/{self.total} {name} ({elapsed:.1f}s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Finish the bar (nothing for plain lines)."""
        if self._bar is not None:
            self._bar.close()
