"""Events the trainer reports to its subscribers (the run writer, the CLI's progress)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

EVENT_KINDS = ("warning", "started", "resumed", "phase", "step", "estep", "checkpoint", "done")


@dataclass
class Event:
    """Progress report: kind is one of EVENT_KINDS."""

    kind: str
    phase: str = ""
    step: int = 0
    total: int = 0
    data: dict[str, Any] = field(default_factory=dict)  # JSON-able figures
    payload: Any = None  # objects for subscribers that write (E-step masks, checkpoint state)


Subscriber = Callable[[Event], None]


class EventBus:
    """Calls every subscriber with each event, in the order they subscribed."""

    def __init__(self, *subscribers: Subscriber | None) -> None:
        self.subscribers = [s for s in subscribers if s is not None]

    def subscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.append(subscriber)

    def __call__(self, event: Event) -> None:
        for subscriber in self.subscribers:
            subscriber(event)
