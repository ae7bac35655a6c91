"""What the sidecar knows of itself, read by health, the admin port and its metrics.

Plain attributes written by the event loop and read by the admin port's thread: each read is of
one attribute, so no lock is needed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class Readiness:
    """Whether Deliver can be served: the store is reachable and no shutdown has begun."""

    store_reachable: bool = True
    shutting_down: bool = False
    store_check_failures: int = 0

    @property
    def ready(self) -> bool:
        return self.store_reachable and not self.shutting_down

    def why_not(self) -> str:
        if self.shutting_down:
            return "shutting down"
        return "store unreachable" if not self.store_reachable else "ready"


@dataclass
class ReloadStatus:
    """The outcome of the last reload, as Alertmanager's config_last_reload_* metrics."""

    successful: bool = True
    last_success: float = 0.0
    reloads: int = 0
    failures: int = 0

    def succeeded(self) -> None:
        self.successful, self.last_success = True, time.time()
        self.reloads += 1

    def failed(self) -> None:
        self.successful = False
        self.failures += 1
