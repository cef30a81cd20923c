"""Futures: one per command id, moved along by what the log says.

    pending   the command is on tensafe.commands (published here, or seen there)
    running   CommandAccepted for it is on the ledger
    completed its success event (commands.SUCCESS_EVENT) is on the ledger
    failed    CommandFailed / BudgetRefused
    cancelled CommandCancelled (or the trainer reports the cancel of it)

States only move forward (a late "pending" from the commands topic never undoes
a "completed" from the ledger): the two topics are followed by separate tasks and
their records interleave arbitrarily. Waiters (long polls, cancels) register a
predicate and are woken on every change of their future.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# command type (short) -> the "type" of API.md §6
API_TYPES = {
    "CreateTrainingClient": "create_training_client",
    "ForwardBackward": "forward_backward",
    "OptimStep": "optim_step",
    "TrainStep": "train_step",
    "Sample": "sample",
    "SaveState": "save_state",
    "LoadState": "load_state",
    "RegisterDataset": "register_dataset",
    "CancelCommand": "cancel",
    "CreatePackage": "create_package",
}
TERMINAL = frozenset({"completed", "failed", "cancelled"})
_RANK = {"pending": 0, "running": 1, "completed": 2, "failed": 2, "cancelled": 2}

# Trainer error codes -> the future error codes of API.md §3 (unknown ones: internal_error).
FUTURE_CODES = {
    "budget_exceeded": "budget_exceeded",
    "invalid_input": "invalid_input",
    "invalid_batch": "invalid_input",
    "invalid_state": "invalid_state",
    "sampling_mode": "invalid_state",
    "not_found": "not_found",
    "model_unavailable": "model_unavailable",
    "invalid_config": "model_unavailable",
    "internal_error": "internal_error",
    "cancelled": "cancelled",
}


def future_error(trainer_code: str, message: str) -> dict[str, Any]:
    """A CommandFailed as the future error of API.md §3 (details as that table says)."""
    code = FUTURE_CODES.get(trainer_code, "internal_error")
    details: dict[str, Any] = {}
    if code == "invalid_state":
        details["reason"] = trainer_code
    if code != trainer_code:
        details["trainer_code"] = trainer_code
    return {"code": code, "message": message, "details": details}


@dataclass(slots=True)
class FutureRec:
    command_id: str
    tenant_id: str
    client_id: str
    command_type: str  # short name, e.g. "OptimStep"
    created_ms: int
    updated_ms: int
    status: str = "pending"
    info: dict[str, Any] = field(
        default_factory=dict
    )  # clear command fields + gateway extras (no ciphertext)
    idem: dict[str, Any] | None = None  # {"fp", "status", "body"}: what a retry with the same key replays
    outcome_type: str | None = None  # short event type that ended it
    outcome: dict[str, Any] | None = None  # that event's payload
    outcome_seq: int | None = None
    model_step: int | None = None  # the client's step when the outcome landed (sample results)
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = None  # rendered result (views), cached
    order: int = 0

    @property
    def api_type(self) -> str:
        return API_TYPES.get(self.command_type, self.command_type)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class FutureTable:
    def __init__(self) -> None:
        self.by_id: dict[str, FutureRec] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._order = 0

    def get(self, command_id: str) -> FutureRec | None:
        return self.by_id.get(command_id)

    def add(self, rec: FutureRec) -> FutureRec:
        """Insert unless known; returns the stored record."""
        have = self.by_id.get(rec.command_id)
        if have is not None:
            return have
        self._order += 1
        rec.order = self._order
        self.by_id[rec.command_id] = rec
        return rec

    def advance(self, rec: FutureRec, status: str, ts_ms: int) -> bool:
        """Move ``rec`` to ``status`` unless that would go backwards; wakes waiters."""
        if _RANK[status] < _RANK[rec.status] or rec.terminal:
            return False
        if status == rec.status:
            return False
        rec.status = status
        rec.updated_ms = max(rec.updated_ms, ts_ms)
        self.notify(rec.command_id)
        return True

    def notify(self, command_id: str) -> None:
        for w in self._waiters.pop(command_id, ()):
            if not w.done():
                w.set_result(None)

    async def wait_for(
        self, command_id: str, pred: Callable[[FutureRec], bool], timeout: float
    ) -> FutureRec | None:
        """Wait until ``pred(rec)`` holds or ``timeout`` passes; returns the record (None if unknown)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            rec = self.by_id.get(command_id)
            if rec is None or pred(rec):
                return rec
            remaining = deadline - loop.time()
            if remaining <= 0:
                return rec
            w: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(command_id, []).append(w)
            try:
                await asyncio.wait_for(w, remaining)
            except TimeoutError:
                return self.by_id.get(command_id)
            finally:
                lst = self._waiters.get(command_id)
                if lst is not None and w in lst:
                    lst.remove(w)
                    if not lst:
                        self._waiters.pop(command_id, None)
