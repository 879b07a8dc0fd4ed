"""Fault injection for the Graph emulator: what can go wrong, where, how often.

A :class:`Fault` targets every mailbox or one, every Graph operation or some, and applies
either to the next ``count`` matching requests or to each one with a ``probability``
(drawn from the emulator's seeded RNG so a chaos run can be replayed). Faults are plain
JSON objects on the admin API (``POST /_admin/faults``) and dataclasses in Python.

Kinds:

``latency``
    Delay before the request is processed (``latency_ms`` fixed, ``uniform`` between
    ``low_ms`` and ``high_ms``, or ``normal`` with ``mean_ms``/``stddev_ms``). The delay
    counts towards the mailbox's concurrency, as a slow real request does.
``throttle``
    429 with ``Retry-After: retry_after`` and error code ``code`` (``TooManyRequests`` by
    default, or ``ApplicationThrottled``).
``unavailable`` / ``gateway_timeout``
    503 ``ServiceNotAvailable`` / 504 ``UnknownError`` (Graph's gateway timeout body).
``reset``
    The request is processed (a send is delivered), then the TCP connection is dropped
    before any response byte is written.
``timeout``
    The request is processed, then the response is withheld for ``hang_ms`` (longer than
    any sane client read timeout).
``duplicate``
    A send is delivered twice for one request (one ``request-id``); the second delivery
    is flagged ``transport_duplicate``.
``visibility_delay``
    A delivered message shows up in Sent Items listings only ``delay_ms`` later.

For ``throttle``, ``unavailable`` and ``gateway_timeout``, ``deliver=true`` makes the
send go out anyway before the error is returned (Graph users have reported exactly that);
for ``reset`` and ``timeout``, ``deliver=false`` loses the request instead.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

__all__ = [
    "DELIVERING_OPERATIONS",
    "OPERATIONS",
    "AppliedFaults",
    "Fault",
    "FaultBook",
    "FaultKind",
]

FaultKind = Literal[
    "latency",
    "throttle",
    "unavailable",
    "gateway_timeout",
    "reset",
    "timeout",
    "duplicate",
    "visibility_delay",
]
Distribution = Literal["fixed", "uniform", "normal"]

# Operation names of the Graph calls the emulator serves. The lookups (``getMessage``:
# one message by id, ``listMessages``: a folder filtered by key) fault like the rest, so
# tests can make the reconciler's reads fail as Graph's do.
OPERATIONS = frozenset({"sendMail", "createMessage", "sendDraft", "getMessage", "listMessages"})
# Operations that deliver a message; only they can be duplicated or delayed in Sent Items.
DELIVERING_OPERATIONS = frozenset({"sendMail", "sendDraft"})
# "send" is shorthand for both delivering operations.
_OPERATION_ALIASES = {"send": DELIVERING_OPERATIONS}

# Kinds that decide the response; at most one of them applies to a request.
OUTCOME_KINDS = frozenset({"throttle", "unavailable", "gateway_timeout", "reset", "timeout"})
_DELIVERY_ONLY_KINDS = frozenset({"duplicate", "visibility_delay"})
_DELIVERS_BY_DEFAULT = frozenset({"reset", "timeout"})


@dataclass
class Fault:
    """One fault rule. ``count=None`` means unlimited; ``probability`` is per request."""

    kind: FaultKind
    mailbox: str | None = None
    operations: frozenset[str] | None = None
    count: int | None = None
    probability: float = 1.0
    # latency
    latency_ms: float = 0.0
    distribution: Distribution = "fixed"
    low_ms: float = 0.0
    high_ms: float = 0.0
    mean_ms: float = 0.0
    stddev_ms: float = 0.0
    # throttle
    retry_after: int = 1
    code: str = "TooManyRequests"
    # throttle / unavailable / gateway_timeout / reset / timeout
    deliver: bool | None = None
    # timeout
    hang_ms: float = 30_000.0
    # visibility_delay
    delay_ms: float = 0.0
    # assigned by the FaultBook
    id: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in get_args(FaultKind):
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.distribution not in get_args(Distribution):
            raise ValueError(f"unknown latency distribution {self.distribution!r}")
        if self.mailbox is not None:
            self.mailbox = self.mailbox.lower()
        if self.operations is not None:
            expanded: set[str] = set()
            for op in self.operations:
                expanded |= _OPERATION_ALIASES.get(op, {op})
            unknown = expanded - OPERATIONS
            if unknown:
                raise ValueError(
                    f"unknown operations {sorted(unknown)}; known: {sorted(OPERATIONS)}"
                )
            self.operations = frozenset(expanded)
        if self.count is not None and self.count < 0:
            raise ValueError("count must be >= 0")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        if self.retry_after < 0:
            raise ValueError("retry_after must be >= 0")
        for name in ("latency_ms", "low_ms", "high_ms", "mean_ms", "stddev_ms", "hang_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.delay_ms < 0:
            raise ValueError("delay_ms must be >= 0")
        if self.high_ms < self.low_ms:
            raise ValueError("high_ms must be >= low_ms")

    @property
    def effective_operations(self) -> frozenset[str]:
        """The operations this fault matches (explicit, or the kind's default)."""
        if self.operations is not None:
            return self.operations
        if self.kind in _DELIVERY_ONLY_KINDS:
            return DELIVERING_OPERATIONS
        return OPERATIONS

    @property
    def delivers(self) -> bool:
        """Whether a send still goes out when this (outcome) fault applies."""
        if self.deliver is not None:
            return self.deliver
        return self.kind in _DELIVERS_BY_DEFAULT

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fault:
        """Build a fault from its JSON form; unknown keys are an error (typos must not pass)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"id"}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown fault fields {sorted(unknown)}")
        kwargs = dict(data)
        ops = kwargs.get("operations")
        if ops is not None:
            if isinstance(ops, str) or not isinstance(ops, Iterable):
                raise ValueError("operations must be a list of operation names")
            kwargs["operations"] = frozenset(str(op) for op in ops)
        return cls(**kwargs)

    @classmethod
    def coerce(cls, value: Fault | Mapping[str, Any]) -> Fault:
        """``value`` itself if it is a fault, else the fault its JSON form describes."""
        return value if isinstance(value, Fault) else cls.from_dict(value)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, with ``remaining`` (``count`` left) for the admin API."""
        out = dataclasses.asdict(self)
        out["operations"] = sorted(self.effective_operations)
        out["remaining"] = out.pop("count")
        return out


@dataclass
class AppliedFaults:
    """What the fault rules decided for one request."""

    latency_s: float = 0.0
    visibility_delay_s: float = 0.0
    duplicate: bool = False
    outcome: Fault | None = None
    applied_ids: list[int] = field(default_factory=list)

    @property
    def kinds(self) -> list[str]:
        """Names of the non-latency effects, for the request record."""
        kinds: list[str] = []
        if self.latency_s:
            kinds.append("latency")
        if self.visibility_delay_s:
            kinds.append("visibility_delay")
        if self.duplicate:
            kinds.append("duplicate")
        if self.outcome is not None:
            kinds.append(self.outcome.kind)
        return kinds


class FaultBook:
    """The active fault rules and the seeded RNG that draws from them. Thread-safe."""

    def __init__(self, faults: Iterable[Fault] = (), *, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._next_id = 1
        self._rng = random.Random(seed)
        for fault in faults:
            self.add(fault)

    def add(self, fault: Fault) -> int:
        """Append ``fault``; returns its id."""
        with self._lock:
            fault.id = self._next_id
            self._next_id += 1
            self._faults.append(fault)
            return fault.id

    def remove(self, fault_id: int) -> bool:
        """Remove one fault by id; False if there was none."""
        with self._lock:
            before = len(self._faults)
            self._faults = [f for f in self._faults if f.id != fault_id]
            return len(self._faults) != before

    def clear(self) -> None:
        """Remove every fault."""
        with self._lock:
            self._faults.clear()

    def reseed(self, seed: int) -> None:
        """Restart the RNG so the same request sequence draws the same faults again."""
        with self._lock:
            self._rng = random.Random(seed)

    def list(self) -> list[Fault]:
        """A snapshot of the rules (copies, so callers cannot change counts)."""
        with self._lock:
            return [dataclasses.replace(f) for f in self._faults]

    def select(self, mailbox: str, operation: str) -> AppliedFaults:
        """Decide the faults for one request and consume their counts."""
        result = AppliedFaults()
        with self._lock:
            for fault in self._faults:
                if fault.count == 0:
                    continue
                if fault.mailbox is not None and fault.mailbox != mailbox:
                    continue
                if operation not in fault.effective_operations:
                    continue
                # Only one fault can decide the response; later ones keep their count.
                if fault.kind in OUTCOME_KINDS and result.outcome is not None:
                    continue
                if fault.probability < 1.0 and self._rng.random() >= fault.probability:
                    continue
                if fault.count is not None:
                    fault.count -= 1
                result.applied_ids.append(fault.id)
                if fault.kind == "latency":
                    result.latency_s += self._sample_latency_ms(fault) / 1000.0
                elif fault.kind == "visibility_delay":
                    result.visibility_delay_s = max(result.visibility_delay_s, fault.delay_ms / 1e3)
                elif fault.kind == "duplicate":
                    result.duplicate = True
                else:
                    result.outcome = fault
        return result

    def _sample_latency_ms(self, fault: Fault) -> float:
        if fault.distribution == "uniform":
            return self._rng.uniform(fault.low_ms, fault.high_ms)
        if fault.distribution == "normal":
            return max(0.0, self._rng.gauss(fault.mean_ms, fault.stddev_ms))
        return fault.latency_ms
