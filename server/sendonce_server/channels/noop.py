"""The `noop` channel: succeeds at once and sends nothing (benchmarks and tests)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..engine.model import Receipt
from ..engine.ports import Delivery, SendResult

# One answer for every send: nothing is allocated per delivery.
_SENT = SendResult.success(Receipt("noop"))


class NoopSettings(BaseModel):
    """Settings of a `noop` receiver."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: float = Field(default=5.0, gt=0, le=300)


class NoopChannel:
    """Reports success for every delivery without sending anything."""

    def __init__(self, settings: NoopSettings) -> None:
        self._timeout = settings.timeout

    @property
    def timeout(self) -> float:
        return self._timeout

    async def send(self, delivery: Delivery) -> SendResult:
        return _SENT

    async def close(self) -> None:
        return None
