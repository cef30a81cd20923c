"""`FutureHandle`: a server-side operation in flight, read by long-polling `GET /futures/{id}?wait=`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .errors import ConflictError, FutureError, FutureTimeoutError, TenSafeError, future_error
from .types import RESULT_TYPES, TERMINAL_STATUSES, FutureState

if TYPE_CHECKING:
    from .client import ServiceClient

__all__ = ["MAX_WAIT_S", "FutureHandle"]

T = TypeVar("T")

MAX_WAIT_S = 30.0
"""Longest `wait` the server honours on one long poll (docs/API.md §6)."""
_READ_MARGIN_S = 15.0
_MIN_POLL_GAP_S = 0.05
_MAX_POLL_GAP_S = 1.0


class FutureHandle(Generic[T]):
    """Handle on one future: `.result()`, `.status()`, `.done()`, `.cancel()`; `await handle` works too."""

    def __init__(
        self,
        service: ServiceClient,
        future_id: str,
        *,
        type: str | None = None,
        converter: Callable[[dict[str, Any]], T] | None = None,
    ) -> None:
        self._service = service
        self._future_id = future_id
        self._type = type
        self._converter = converter
        self._state: FutureState | None = None
        self._value: T | None = None
        self._error: FutureError | None = None
        self.observed = False
        """True once the caller has seen the outcome (result, exception, done() true or a terminal status)."""

    # ------------------------------------------------------------ plain accessors

    @property
    def future_id(self) -> str:
        return self._future_id

    @property
    def type(self) -> str | None:
        """Operation type (`forward_backward`, `optim_step`, ...), once known."""
        return self._type

    @property
    def last_state(self) -> FutureState | None:
        """The most recent state read from the server (no request)."""
        return self._state

    def __repr__(self) -> str:
        status = self._state.status if self._state else "unknown"
        return f"<FutureHandle {self._future_id} type={self._type} status={status}>"

    # ------------------------------------------------------------ state handling

    def _path(self) -> str:
        return f"/futures/{self._future_id}"

    def _absorb(self, data: Any) -> FutureState:
        state = FutureState.from_dict(data)
        if state.type:
            self._type = state.type
        self._state = state
        if state.status == "completed":
            self._value = self._convert(state.result or {})
        elif state.status in ("failed", "cancelled"):
            err = state.error.to_dict() if state.error else None
            self._error = future_error(self._future_id, state.status, err)
        return state

    def _convert(self, result: dict[str, Any]) -> T:
        if self._converter is not None:
            return self._converter(result)
        cls = RESULT_TYPES.get(self._type or "")
        return cls.from_dict(result) if cls is not None else result  # type: ignore[return-value]

    def _terminal(self) -> bool:
        return self._state is not None and self._state.status in TERMINAL_STATUSES

    def _outcome(self) -> T:
        self.observed = True
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    @staticmethod
    def _wait_for(deadline: float | None) -> float:
        if deadline is None:
            return MAX_WAIT_S
        return max(0.0, min(MAX_WAIT_S, deadline - time.monotonic()))

    def _timeout_error(self, timeout: float | None) -> FutureTimeoutError:
        status = self._state.status if self._state else "unknown"
        return FutureTimeoutError(
            f"future {self._future_id} not done after {timeout}s (status {status})", future_id=self._future_id
        )

    # ------------------------------------------------------------ sync API

    def poll(self, wait: float = 0.0) -> FutureState:
        """One `GET /futures/{id}?wait=` (no request once terminal); the raw state."""
        state = self._poll(wait)
        self.observed = self.observed or state.done
        return state

    def _poll(self, wait: float = 0.0) -> FutureState:
        if self._terminal():
            return self._state  # type: ignore[return-value]
        wait = max(0.0, min(MAX_WAIT_S, wait))
        data = self._service._http.request(
            "GET", self._path(), params={"wait": _fmt(wait)}, read_timeout=wait + _READ_MARGIN_S
        )
        return self._absorb(data)

    def status(self) -> str:
        """Current status: pending, running, completed, failed or cancelled."""
        return self.poll().status

    def done(self) -> bool:
        """True when completed, failed or cancelled (non-blocking)."""
        return self.poll().done

    def result(self, timeout: float | None = None) -> T:
        """Block until terminal and return the typed result, or raise the future's error.

        Raises `FutureFailedError` (`FutureBudgetExceededError` for refused steps),
        `FutureCancelledError`, or `FutureTimeoutError` when `timeout` seconds pass first.
        """
        self._wait(timeout)
        return self._outcome()

    def _wait(self, timeout: float | None) -> None:
        """Long-poll until terminal (does not count as observing the outcome)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        gap = _MIN_POLL_GAP_S
        while True:
            wait = self._wait_for(deadline)
            started = time.monotonic()
            self._poll(wait)
            if self._terminal():
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise self._timeout_error(timeout)
            if time.monotonic() - started < min(wait, gap):  # server answered early: don't spin
                time.sleep(gap)
                gap = min(_MAX_POLL_GAP_S, gap * 2)

    def exception(self, timeout: float | None = None) -> TenSafeError | None:
        """Wait like `result()` and return the future's error instead of raising it (None if completed)."""
        try:
            self.result(timeout)
        except FutureTimeoutError:
            raise
        except FutureError as exc:
            return exc
        return None

    def cancel(self) -> bool:
        """Cancel if still pending; True if the future is (now) cancelled."""
        if self._terminal():
            return self._state.status == "cancelled"  # type: ignore[union-attr]
        try:
            data = self._service._http.request("DELETE", self._path())
        except ConflictError:
            self._poll()
            return False
        self.observed = True
        return self._absorb(data).status == "cancelled"

    # ------------------------------------------------------------ async API

    async def poll_async(self, wait: float = 0.0) -> FutureState:
        """Async `poll`."""
        state = await self._poll_async(wait)
        self.observed = self.observed or state.done
        return state

    async def _poll_async(self, wait: float = 0.0) -> FutureState:
        if self._terminal():
            return self._state  # type: ignore[return-value]
        wait = max(0.0, min(MAX_WAIT_S, wait))
        data = await self._service._ahttp.request(
            "GET", self._path(), params={"wait": _fmt(wait)}, read_timeout=wait + _READ_MARGIN_S
        )
        return self._absorb(data)

    async def status_async(self) -> str:
        """Async `status`."""
        return (await self.poll_async()).status

    async def done_async(self) -> bool:
        """Async `done`."""
        return (await self.poll_async()).done

    async def result_async(self, timeout: float | None = None) -> T:
        """Async `result`."""
        await self._wait_async(timeout)
        return self._outcome()

    async def _wait_async(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        gap = _MIN_POLL_GAP_S
        while True:
            wait = self._wait_for(deadline)
            started = time.monotonic()
            await self._poll_async(wait)
            if self._terminal():
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise self._timeout_error(timeout)
            if time.monotonic() - started < min(wait, gap):
                await asyncio.sleep(gap)
                gap = min(_MAX_POLL_GAP_S, gap * 2)

    async def exception_async(self, timeout: float | None = None) -> TenSafeError | None:
        """Async `exception`."""
        try:
            await self.result_async(timeout)
        except FutureTimeoutError:
            raise
        except FutureError as exc:
            return exc
        return None

    async def cancel_async(self) -> bool:
        """Async `cancel`."""
        if self._terminal():
            return self._state.status == "cancelled"  # type: ignore[union-attr]
        try:
            data = await self._service._ahttp.request("DELETE", self._path())
        except ConflictError:
            await self._poll_async()
            return False
        self.observed = True
        return self._absorb(data).status == "cancelled"

    def __await__(self) -> Generator[Any, None, T]:
        return self.result_async().__await__()


def _fmt(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".") or "0"
