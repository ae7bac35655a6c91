"""The vocabulary of the engine: keys, notifications, outcomes and the per-key record."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _quote  # json.dumps's own (C) quoting
from types import MappingProxyType
from typing import NamedTuple

# One shared empty mapping: a default that costs no memory per record.
EMPTY: Mapping[str, str] = MappingProxyType({})


class Key(NamedTuple):
    """A delivery is identified by the notification's uid and the receiver (channel) name.

    A named tuple, not a dataclass: a key is hashed a dozen times per Deliver (flights, store,
    watchers), and a tuple hashes in C.
    """

    uid: str
    channel: str

    @property
    def idempotency_key(self) -> str:
        """Stable for the key across attempts, replicas and restarts, so receivers can dedupe."""
        digest = hashlib.sha256(f"{self.uid}\x00{self.channel}".encode()).hexdigest()
        return f"msg_{digest[:32]}"


class Priority(enum.Enum):
    UNSPECIFIED = "unspecified"
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True)
class Link:
    title: str
    url: str


@dataclass(frozen=True, slots=True)
class Notification:
    subject: str
    body: str = ""
    priority: Priority = Priority.UNSPECIFIED
    metadata: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    links: tuple[Link, ...] = ()

    def canonical(self) -> dict[str, object]:
        """A deterministic, JSON-ready form (also what channels serialise)."""
        return {
            "subject": self.subject,
            "body": self.body,
            "priority": self.priority.value,
            "metadata": dict(sorted(self.metadata.items())),
            "links": [{"title": link.title, "url": link.url} for link in self.links],
        }

    def fingerprint(self) -> str:
        """Hash of the canonical form: a key only ever delivers the payload it first saw.

        Hashes the text `json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))`
        writes (records already stored hold it), built directly rather than through json.dumps.
        """
        metadata = ",".join(f"{_quote(k)}:{_quote(v)}" for k, v in sorted(self.metadata.items()))
        links = ",".join(
            f'{{"title":{_quote(link.title)},"url":{_quote(link.url)}}}' for link in self.links
        )
        data = (
            f'{{"body":{_quote(self.body)},"links":[{links}],"metadata":{{{metadata}}},'
            f'"priority":{_quote(self.priority.value)},"subject":{_quote(self.subject)}}}'
        )
        return hashlib.sha256(data.encode()).hexdigest()[:32]


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    ALREADY_DELIVERED = "already_delivered"
    FAILED = "failed"
    FAILED_PERMANENT = "failed_permanent"
    EXHAUSTED = "exhausted"
    RETRY_LATER = "retry_later"
    IN_PROGRESS = "in_progress"
    CIRCUIT_OPEN = "circuit_open"


class Status(enum.Enum):
    """Where a key stands. Every status but OPEN is final: nothing more is ever sent."""

    OPEN = "open"
    DELIVERED = "delivered"
    FAILED_PERMANENT = "failed_permanent"
    EXHAUSTED = "exhausted"


class CircuitState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class AttemptResult(enum.Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    FAILED_PERMANENT = "failed_permanent"
    ABANDONED = "abandoned"
    # Never stored: a completion that gives back a reservation whose attempt was never sent.
    RELEASED = "released"


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the receiver answered to a successful attempt."""

    reference: str
    details: Mapping[str, str] = field(default_factory=lambda: EMPTY)


@dataclass(slots=True)
class AttemptEntry:
    number: int
    started_at: float
    result: AttemptResult = AttemptResult.RUNNING
    finished_at: float | None = None
    error: str = ""
    # The lease's fencing token: a late completion only ever touches its own attempt's entry.
    token: int = 0


@dataclass(slots=True)
class Lease:
    """Held by the attempt in flight. The token fences late completions of older attempts."""

    attempt: int
    token: int
    expires_at: float
    # Chosen by the caller before it asks: a caller that lost the reply finds its own lease.
    reservation: str = ""


@dataclass(slots=True)
class Record:
    """Everything a store keeps for a key. Stores persist it; the decisions change it."""

    fingerprint: str
    max_attempts: int
    attempts: int = 0
    status: Status = Status.OPEN
    lease: Lease | None = None
    next_attempt_at: float = 0.0
    last_error: str = ""
    receipt: Receipt | None = None
    history: list[AttemptEntry] = field(default_factory=list)
    # Last fencing token issued; a new record's starts above every earlier token of its key (the
    # creation time in microseconds, and the floor a forced clear leaves: decisions.forget).
    fence: int = 0
    cleared: bool = False
    expires_at: float = 0.0

    def entry(self, number: int, token: int) -> AttemptEntry | None:
        for candidate in reversed(self.history):
            if candidate.number == number and candidate.token == token:
                return candidate
        return None

    @property
    def final(self) -> bool:
        return self.status is not Status.OPEN


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """The answer to one Deliver call."""

    outcome: Outcome
    attempt: int
    attempts_used: int
    max_attempts: int
    retry_after: float | None = None
    last_error: str = ""
    shared: bool = False
    final: bool = False
    receipt: Receipt | None = None
    # What the receiver sees as the key's idempotency key (Key.idempotency_key).
    idempotency_key: str = ""


@dataclass(frozen=True, slots=True)
class KeyState:
    """The answer to AttemptCount: a read that changes nothing."""

    found: bool
    attempts_used: int
    max_attempts: int
    in_flight: bool = False
    succeeded: bool = False
    final: bool = False
    retry_after: float | None = None
    last_error: str = ""
    history: tuple[AttemptEntry, ...] = ()
    cleared: bool = False
    circuit: CircuitState = CircuitState.CLOSED
    # What the receiver sees as the key's idempotency key (Key.idempotency_key).
    idempotency_key: str = ""

    @property
    def remaining(self) -> int:
        return 0 if self.final else max(0, self.max_attempts - self.attempts_used)


@dataclass(slots=True)
class ReceiverCounts:
    """Attempts this process made through one receiver since it started."""

    started: int = 0
    in_flight: int = 0
    succeeded: int = 0
    failed: int = 0
    failed_permanent: int = 0


@dataclass(frozen=True, slots=True)
class ReceiverState:
    """The answer to ListReceivers for one receiver: never its settings (they hold secrets)."""

    name: str
    kind: str
    circuit: CircuitState
    # Seconds until a probe may go through, while the circuit is open.
    circuit_retry_after: float | None
    consecutive_failures: int
    max_attempts: int
    counts: ReceiverCounts


@dataclass(frozen=True, slots=True)
class ClearResult:
    cleared: tuple[str, ...]
    running: tuple[str, ...]
