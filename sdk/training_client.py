"""`TrainingClient`: the Tinker-style primitives on one LoRA adapter under DP-SGD.

Commands of one training client run on the server strictly in the order they were accepted.
This client submits them one at a time, in call order, so `tc.forward_backward(b); tc.optim_step()`
is correct even when nobody waits on the futures. Futures that are never looked at are tracked;
`wait_pending()` (called by `get_dp_metrics()`) waits for them and reports failures.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._inputs import forward_backward_body, prompt_fields
from .errors import FutureError, ValidationError
from .futures import FutureHandle
from .types import (
    AdamParams,
    AuditLogPage,
    DPMetrics,
    ForwardBackwardResult,
    LoadStateResult,
    OptimStepResult,
    PackageResult,
    SampleResult,
    SamplingParams,
    SaveStateResult,
    TrainingClientStatus,
    TrainingConfig,
    TrainStepResult,
)

if TYPE_CHECKING:
    from .client import ServiceClient

__all__ = ["TrainingClient"]

logger = logging.getLogger("tensafe")

_PENDING_REFRESH_AT = 1024


def _adam_body(adam_params: AdamParams | Mapping[str, Any] | None) -> dict[str, Any]:
    if adam_params is None:
        return {}
    if isinstance(adam_params, Mapping):
        adam_params = AdamParams.from_user_dict(dict(adam_params))
    return {"adam_params": adam_params.to_dict()}


class TrainingClient:
    """One training client (`tc_...`); every method has an `*_async` twin."""

    def __init__(
        self, service: ServiceClient, client_id: str, *, config: TrainingConfig | None = None
    ) -> None:
        self._service = service
        self.client_id = client_id
        self.config = config
        self._status: TrainingClientStatus | None = None
        self._lock = threading.Lock()
        self._alock: asyncio.Lock | None = None
        self._alock_loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[FutureHandle[Any]] = []
        self.unobserved_errors: list[FutureError] = []
        """Failures of futures nobody looked at, found by `wait_pending()`."""

    def __repr__(self) -> str:
        return f"<TrainingClient {self.client_id} model={self.model_ref}>"

    @property
    def model_ref(self) -> str | None:
        if self.config is not None:
            return self.config.model_ref
        return self._status.model_ref if self._status else None

    def _path(self, op: str) -> str:
        return f"/training_clients/{self.client_id}/{op}"

    # ------------------------------------------------------------ submission (ordered)

    def _handle(self, data: dict[str, Any], op: str) -> FutureHandle[Any]:
        handle: FutureHandle[Any] = FutureHandle(
            self._service, data["future_id"], type=data.get("type") or op
        )
        self._pending = [h for h in self._pending if not h.observed]
        self._pending.append(handle)
        return handle

    def _submit(self, op: str, body: dict[str, Any]) -> FutureHandle[Any]:
        with self._lock:  # one POST at a time: acceptance order == call order
            data = self._service._http.request("POST", self._path(op), json=body)
            handle = self._handle(data, op)
        if len(self._pending) > _PENDING_REFRESH_AT:
            self._refresh(self._pending[:100])
        return handle

    def _async_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._alock is None or self._alock_loop is not loop:
            self._alock, self._alock_loop = asyncio.Lock(), loop
        return self._alock

    async def _submit_async(self, op: str, body: dict[str, Any]) -> FutureHandle[Any]:
        async with self._async_lock():  # FIFO: acceptance order == call order
            data = await self._service._ahttp.request("POST", self._path(op), json=body)
            handle = self._handle(data, op)
        if len(self._pending) > _PENDING_REFRESH_AT:
            await self._refresh_async(self._pending[:100])
        return handle

    # ------------------------------------------------------------ tracking of unobserved futures

    def pending_futures(self) -> list[FutureHandle[Any]]:
        """Submitted futures whose outcome nobody has looked at yet (as last known)."""
        return [h for h in self._pending if not h.observed]

    def _note(self, handles: list[FutureHandle[Any]]) -> list[FutureError]:
        errors: list[FutureError] = []
        for h in handles:
            if h.observed or not h._terminal():
                continue
            if h._error is not None:
                logger.warning("tensafe: %s future %s ended unobserved: %s", h.type, h.future_id, h._error)
                errors.append(h._error)
                self.unobserved_errors.append(h._error)
            h.observed = True
        self._pending = [h for h in self._pending if not h.observed]
        return errors

    def _refresh(self, handles: list[FutureHandle[Any]]) -> list[FutureError]:
        by_id = {h.future_id: h for h in handles if not h._terminal()}
        for data in self._service._batch_get(list(by_id)):
            h = by_id.get(data.get("future_id", ""))
            if h is not None:
                h._absorb(data)
        return self._note(handles)

    async def _refresh_async(self, handles: list[FutureHandle[Any]]) -> list[FutureError]:
        by_id = {h.future_id: h for h in handles if not h._terminal()}
        for data in await self._service._batch_get_async(list(by_id)):
            h = by_id.get(data.get("future_id", ""))
            if h is not None:
                h._absorb(data)
        return self._note(handles)

    def wait_pending(self, timeout: float | None = None) -> list[FutureError]:
        """Wait until every submitted future is terminal; return (and log) failures nobody observed.

        The server runs commands in order, so this waits on the newest one and then reads the rest.
        """
        handles = list(self._pending)
        if not handles:
            return []
        handles[-1]._wait(timeout)
        return self._refresh(handles)

    async def wait_pending_async(self, timeout: float | None = None) -> list[FutureError]:
        """Async `wait_pending`."""
        handles = list(self._pending)
        if not handles:
            return []
        await handles[-1]._wait_async(timeout)
        return await self._refresh_async(handles)

    # ------------------------------------------------------------ forward_backward

    @staticmethod
    def _fb_body(batch_or_data: Any, loss_fn: str, return_logprobs: bool) -> dict[str, Any]:
        body = forward_backward_body(batch_or_data)
        body["loss_fn"] = loss_fn
        if return_logprobs:
            body["return_logprobs"] = True
        return body

    def forward_backward(
        self, batch_or_data: Any, loss_fn: str = "cross_entropy", return_logprobs: bool = False
    ) -> FutureHandle[ForwardBackwardResult]:
        """Submit forward + backward (per-sample clipped gradients accumulate until `optim_step`).

        `batch_or_data`: a mapping `{input_ids, attention_mask?, labels?}` of lists, tensors or arrays,
        a `Batch`, or a list of `Datum` (`tokens`, `target_tokens`, `weights`).
        """
        return self._submit("forward_backward", self._fb_body(batch_or_data, loss_fn, return_logprobs))

    async def forward_backward_async(
        self, batch_or_data: Any, loss_fn: str = "cross_entropy", return_logprobs: bool = False
    ) -> FutureHandle[ForwardBackwardResult]:
        """Async `forward_backward`: `fut = await tc.forward_backward_async(b); res = await fut`."""
        return await self._submit_async(
            "forward_backward", self._fb_body(batch_or_data, loss_fn, return_logprobs)
        )

    # ------------------------------------------------------------ optim_step / train_step

    def optim_step(
        self, adam_params: AdamParams | Mapping[str, Any] | None = None
    ) -> FutureHandle[OptimStepResult]:
        """Submit a DP optimizer step (noise, AdamW, accounting); refused steps fail with `budget_exceeded`."""
        return self._submit("optim_step", _adam_body(adam_params))

    async def optim_step_async(
        self, adam_params: AdamParams | Mapping[str, Any] | None = None
    ) -> FutureHandle[OptimStepResult]:
        """Async `optim_step`."""
        return await self._submit_async("optim_step", _adam_body(adam_params))

    def train_step(
        self, adam_params: AdamParams | Mapping[str, Any] | None = None
    ) -> FutureHandle[TrainStepResult]:
        """Submit one server-side step: Poisson batch from the registered dataset, forward/backward, DP step."""
        return self._submit("train_step", _adam_body(adam_params))

    async def train_step_async(
        self, adam_params: AdamParams | Mapping[str, Any] | None = None
    ) -> FutureHandle[TrainStepResult]:
        """Async `train_step`."""
        return await self._submit_async("train_step", _adam_body(adam_params))

    # ------------------------------------------------------------ sample

    @staticmethod
    def _sample_body(
        prompts: Any,
        prompt_tokens: Any,
        sampling_params: SamplingParams | None,
        num_samples: int,
        overrides: dict[str, Any],
    ) -> dict[str, Any]:
        params = sampling_params.to_dict() if sampling_params is not None else {}
        params.update({k: v for k, v in overrides.items() if v is not None})
        if "stop" in params and isinstance(params["stop"], str):
            params["stop"] = [params["stop"]]
        if not 1 <= num_samples <= 16:
            raise ValidationError("num_samples: must be in 1..16", code="schema_violation")
        return {**prompt_fields(prompts, prompt_tokens), **params, "num_samples": num_samples}

    def sample(
        self,
        prompts: Any = None,
        prompt_tokens: Any = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        stop: Any = None,
        seed: int | None = None,
        num_samples: int = 1,
        *,
        sampling_params: SamplingParams | None = None,
        timeout: float | None = None,
    ) -> SampleResult:
        """Generate from the current adapter and wait: `tc.sample(prompts=[...], max_tokens=128).samples[0].completion`.

        Unset parameters take the server defaults (max_tokens 128, temperature 1.0, top_p 1.0, top_k off).
        """
        body = self._sample_body(
            prompts,
            prompt_tokens,
            sampling_params,
            num_samples,
            dict(
                max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, stop=stop, seed=seed
            ),
        )
        handle = self._submit("sample", body)
        return handle.result(timeout)

    async def sample_async(
        self,
        prompts: Any = None,
        prompt_tokens: Any = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        stop: Any = None,
        seed: int | None = None,
        num_samples: int = 1,
        *,
        sampling_params: SamplingParams | None = None,
        timeout: float | None = None,
    ) -> SampleResult:
        """Async `sample`."""
        body = self._sample_body(
            prompts,
            prompt_tokens,
            sampling_params,
            num_samples,
            dict(
                max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, stop=stop, seed=seed
            ),
        )
        handle = await self._submit_async("sample", body)
        return await handle.result_async(timeout)

    # ------------------------------------------------------------ state

    @staticmethod
    def _save_body(
        name: str | None, include_optimizer: bool, metadata: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"include_optimizer": bool(include_optimizer)}
        if name is not None:
            body["name"] = name
        if metadata is not None:
            body["metadata"] = dict(metadata)
        return body

    def save_state(
        self,
        name: str | None = None,
        include_optimizer: bool = True,
        metadata: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> SaveStateResult:
        """Save an encrypted checkpoint (after every command submitted before it) and wait for it."""
        handle = self._submit("save_state", self._save_body(name, include_optimizer, metadata))
        return handle.result(timeout)

    async def save_state_async(
        self,
        name: str | None = None,
        include_optimizer: bool = True,
        metadata: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> SaveStateResult:
        """Async `save_state`."""
        handle = await self._submit_async("save_state", self._save_body(name, include_optimizer, metadata))
        return await handle.result_async(timeout)

    def create_package(
        self,
        recipients: list[bytes],
        name: str | None = None,
        *,
        max_proofs: int = 16,
        timeout: float | None = None,
    ) -> PackageResult:
        """Package the adapter as a signed TSSP file encrypted to ``recipients`` (hybrid
        X25519 + ML-KEM-768 public key bytes); download it with `ServiceClient.download_package`."""
        return self._submit("package", self._package_body(recipients, name, max_proofs)).result(timeout)

    async def create_package_async(
        self,
        recipients: list[bytes],
        name: str | None = None,
        *,
        max_proofs: int = 16,
        timeout: float | None = None,
    ) -> PackageResult:
        """Async `create_package`."""
        handle = await self._submit_async("package", self._package_body(recipients, name, max_proofs))
        return await handle.result_async(timeout)

    @staticmethod
    def _package_body(recipients: list[bytes], name: str | None, max_proofs: int) -> dict[str, Any]:
        import base64

        body: dict[str, Any] = {
            "recipients": [base64.b64encode(bytes(r)).decode() for r in recipients],
            "max_proofs": max_proofs,
        }
        if name is not None:
            body["name"] = name
        return body

    def load_state(
        self, artifact_id: str, *, load_optimizer: bool = True, timeout: float | None = None
    ) -> LoadStateResult:
        """Load a saved artifact of this tenant into this client and wait for it."""
        body = {"artifact_id": artifact_id, "load_optimizer": bool(load_optimizer)}
        return self._submit("load_state", body).result(timeout)

    async def load_state_async(
        self, artifact_id: str, *, load_optimizer: bool = True, timeout: float | None = None
    ) -> LoadStateResult:
        """Async `load_state`."""
        body = {"artifact_id": artifact_id, "load_optimizer": bool(load_optimizer)}
        return await (await self._submit_async("load_state", body)).result_async(timeout)

    # ------------------------------------------------------------ reads

    def get_dp_metrics(self, *, wait_pending: bool = True) -> DPMetrics:
        """Privacy spent so far; by default first waits for this client's submitted commands to finish."""
        if wait_pending:
            self.wait_pending()
        return DPMetrics.from_dict(self._service._http.request("GET", self._path("dp_metrics")))

    async def get_dp_metrics_async(self, *, wait_pending: bool = True) -> DPMetrics:
        """Async `get_dp_metrics`."""
        if wait_pending:
            await self.wait_pending_async()
        return DPMetrics.from_dict(await self._service._ahttp.request("GET", self._path("dp_metrics")))

    @staticmethod
    def _audit_params(after_seq: int | None, limit: int) -> dict[str, Any]:
        if not 1 <= limit <= 1000:
            raise ValidationError("limit: must be in 1..1000")
        return {"after_seq": after_seq, "limit": limit}

    def get_audit_logs(self, after_seq: int | None = None, limit: int = 100) -> AuditLogPage:
        """One page of this client's hash-chained ledger events with `seq > after_seq`."""
        data = self._service._http.request(
            "GET", self._path("audit_logs"), params=self._audit_params(after_seq, limit)
        )
        return AuditLogPage.from_dict(data)

    async def get_audit_logs_async(self, after_seq: int | None = None, limit: int = 100) -> AuditLogPage:
        """Async `get_audit_logs`."""
        data = await self._service._ahttp.request(
            "GET", self._path("audit_logs"), params=self._audit_params(after_seq, limit)
        )
        return AuditLogPage.from_dict(data)

    def status(self) -> TrainingClientStatus:
        """`GET /training_clients/{id}`."""
        self._status = TrainingClientStatus.from_dict(
            self._service._http.request("GET", f"/training_clients/{self.client_id}")
        )
        return self._status

    async def status_async(self) -> TrainingClientStatus:
        """Async `status`."""
        self._status = TrainingClientStatus.from_dict(
            await self._service._ahttp.request("GET", f"/training_clients/{self.client_id}")
        )
        return self._status
