"""`ServiceClient`: configuration, transport, and the service-level calls of docs/API.md."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

import httpx

from ._http import AsyncHTTP, RetryPolicy, SyncHTTP
from ._inputs import plain
from .errors import ConfigurationError, IntegrityError, ValidationError
from .futures import FutureHandle
from .training_client import TrainingClient
from .types import Dataset, ModelInfo, SaveStateResult, TrainingClientStatus, TrainingConfig

__all__ = ["DEFAULT_BASE_URL", "ServiceClient", "canonical_json", "content_hash"]

DEFAULT_BASE_URL = "http://localhost:8000"
ENV_BASE_URL = "TENSAFE_BASE_URL"
ENV_API_KEY = "TENSAFE_API_KEY"
_MAX_BATCH_GET = 100


def canonical_json(value: Any) -> bytes:
    """Canonical JSON of docs/API.md §1 (sorted keys, no whitespace, UTF-8)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def content_hash(value: Any) -> str:
    """`sha256:<hex>` of the canonical JSON of `value`."""
    return "sha256:" + hashlib.sha256(canonical_json(value)).hexdigest()


def _dataset_records(items: Iterable[Any]) -> tuple[str, list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    kinds: set[str] = set()
    for i, item in enumerate(items):
        if isinstance(item, str):
            kinds.add("records")
            records.append({"text": item})
        elif isinstance(item, Mapping) and "text" in item:
            kinds.add("records")
            records.append({"text": str(item["text"])})
        elif isinstance(item, Mapping) and "input_ids" in item:
            kinds.add("token_records")
            rec = {"input_ids": plain(item["input_ids"])}
            if item.get("labels") is not None:
                rec["labels"] = plain(item["labels"])
            records.append(rec)
        else:
            value = plain(item)
            if isinstance(value, list) and all(isinstance(v, int) for v in value):
                kinds.add("token_records")
                records.append({"input_ids": value})
            else:
                raise ValidationError(
                    f"dataset record {i}: expected text, token ids, or a dict", code="schema_violation"
                )
    if len(kinds) != 1:
        raise ValidationError(
            "dataset: records must be all text or all token ids, and not empty", code="schema_violation"
        )
    return kinds.pop(), records


class ServiceClient:
    """Entry point: `ServiceClient(base_url, api_key)`.

    Unset arguments come from `TENSAFE_BASE_URL` (else `http://localhost:8000`) and `TENSAFE_API_KEY`.
    Retries: see docs/API.md §8. Use as a context manager, or call `close()` / `await aclose()`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 20.0,
        retry_after_max: float = 60.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        base_url = base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
        api_key = api_key or os.environ.get(ENV_API_KEY)
        if not api_key:
            raise ConfigurationError(f"no API key: pass api_key= or set {ENV_API_KEY}")
        retry = RetryPolicy(
            max_retries=max_retries,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            retry_after_max=retry_after_max,
        )
        self._http = SyncHTTP(
            base_url, api_key, timeout=timeout, retry=retry, headers=headers, transport=transport
        )
        self._ahttp = AsyncHTTP(
            base_url, api_key, timeout=timeout, retry=retry, headers=headers, transport=async_transport
        )

    @property
    def base_url(self) -> str:
        """The API root, ending in `/api/v1`."""
        return self._http.base_url

    def __repr__(self) -> str:
        return f"<ServiceClient {self.base_url}>"

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the connection pools."""
        self._http.close()
        self._ahttp.close_nowait()

    async def aclose(self) -> None:
        """Close the connection pools (from async code)."""
        await self._ahttp.aclose()
        self._http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> ServiceClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------ service

    def health(self) -> dict[str, Any]:
        """`GET /healthz`."""
        return self._http.request("GET", "/healthz")

    async def health_async(self) -> dict[str, Any]:
        """Async `health`."""
        return await self._ahttp.request("GET", "/healthz")

    def list_models(self) -> list[ModelInfo]:
        """`GET /models`."""
        return [ModelInfo.from_dict(m) for m in self._http.request("GET", "/models")["models"]]

    async def list_models_async(self) -> list[ModelInfo]:
        """Async `list_models`."""
        return [ModelInfo.from_dict(m) for m in (await self._ahttp.request("GET", "/models"))["models"]]

    # ------------------------------------------------------------ training clients

    def _creation_body(self, config: TrainingConfig | Mapping[str, Any]) -> dict[str, Any]:
        if isinstance(config, TrainingConfig):
            return config.to_dict()
        if isinstance(config, Mapping):
            return TrainingConfig.from_user_dict(dict(config)).to_dict()
        raise ValidationError("config must be a TrainingConfig", code="schema_violation")

    def _new_training_client(
        self, data: dict[str, Any], config: Any
    ) -> tuple[TrainingClient, FutureHandle[Any]]:
        tc = TrainingClient(
            self, data["client_id"], config=config if isinstance(config, TrainingConfig) else None
        )
        fut: FutureHandle[TrainingClientStatus] = FutureHandle(
            self,
            data["future_id"],
            type=data.get("type", "create_training_client"),
            converter=TrainingClientStatus.from_dict,
        )
        return tc, fut

    def create_training_client(
        self, config: TrainingConfig | Mapping[str, Any], *, timeout: float | None = None
    ) -> TrainingClient:
        """Create a training client and wait until it is ready (model loaded)."""
        data = self._http.request("POST", "/training_clients", json=self._creation_body(config))
        tc, fut = self._new_training_client(data, config)
        tc._status = fut.result(timeout)
        return tc

    async def create_training_client_async(
        self, config: TrainingConfig | Mapping[str, Any], *, timeout: float | None = None
    ) -> TrainingClient:
        """Async `create_training_client`."""
        data = await self._ahttp.request("POST", "/training_clients", json=self._creation_body(config))
        tc, fut = self._new_training_client(data, config)
        tc._status = await fut.result_async(timeout)
        return tc

    def get_training_client(self, client_id: str) -> TrainingClient:
        """Attach to an existing training client (404 `NotFoundError` if unknown)."""
        tc = TrainingClient(self, client_id)
        tc.status()
        return tc

    async def get_training_client_async(self, client_id: str) -> TrainingClient:
        """Async `get_training_client`."""
        tc = TrainingClient(self, client_id)
        await tc.status_async()
        return tc

    def _pages(self, path: str, key: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            page = self._http.request("GET", path, params={**params, "cursor": cursor})
            out.extend(page.get(key) or [])
            cursor = page.get("next_cursor")
            if not cursor:
                return out

    async def _pages_async(self, path: str, key: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            page = await self._ahttp.request("GET", path, params={**params, "cursor": cursor})
            out.extend(page.get(key) or [])
            cursor = page.get("next_cursor")
            if not cursor:
                return out

    def list_training_clients(self) -> list[TrainingClientStatus]:
        """All of the tenant's training clients, newest first."""
        return [
            TrainingClientStatus.from_dict(d)
            for d in self._pages("/training_clients", "training_clients", {})
        ]

    async def list_training_clients_async(self) -> list[TrainingClientStatus]:
        """Async `list_training_clients`."""
        items = await self._pages_async("/training_clients", "training_clients", {})
        return [TrainingClientStatus.from_dict(d) for d in items]

    # ------------------------------------------------------------ futures

    def get_future(self, future_id: str) -> FutureHandle[Any]:
        """A handle on any future of this tenant; the result type follows the future's `type`."""
        return FutureHandle(self, future_id)

    def _batch_get(self, ids: list[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i in range(0, len(ids), _MAX_BATCH_GET):
            chunk = ids[i : i + _MAX_BATCH_GET]
            out.extend(self._http.request("GET", "/futures", params={"ids": chunk}).get("futures") or [])
        return out

    async def _batch_get_async(self, ids: list[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i in range(0, len(ids), _MAX_BATCH_GET):
            chunk = ids[i : i + _MAX_BATCH_GET]
            page = await self._ahttp.request("GET", "/futures", params={"ids": chunk})
            out.extend(page.get("futures") or [])
        return out

    # ------------------------------------------------------------ datasets

    def _dataset_body(
        self, name: str, items: Iterable[Any], metadata: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        kind, records = _dataset_records(items)
        body: dict[str, Any] = {"name": name, kind: records}
        if metadata is not None:
            body["metadata"] = dict(metadata)
        return body

    @staticmethod
    def _check_dataset(body: dict[str, Any], data: dict[str, Any]) -> Dataset:
        ds = Dataset.from_dict(data)
        records = body.get("records", body.get("token_records"))
        expected = content_hash(records)
        if ds.content_hash is not None and ds.content_hash != expected:
            raise IntegrityError(f"dataset content_hash {ds.content_hash} != {expected} computed locally")
        return ds

    def register_dataset(
        self, name: str, texts: Iterable[Any], *, metadata: Mapping[str, Any] | None = None
    ) -> Dataset:
        """Upload a dataset (texts, or token-id lists) to be stored encrypted server-side.

        The returned `content_hash` is checked against the hash computed locally.
        """
        body = self._dataset_body(name, texts, metadata)
        return self._check_dataset(body, self._http.request("POST", "/datasets", json=body))

    async def register_dataset_async(
        self, name: str, texts: Iterable[Any], *, metadata: Mapping[str, Any] | None = None
    ) -> Dataset:
        """Async `register_dataset`."""
        body = self._dataset_body(name, texts, metadata)
        return self._check_dataset(body, await self._ahttp.request("POST", "/datasets", json=body))

    def get_dataset(self, dataset_id: str) -> Dataset:
        """`GET /datasets/{id}`."""
        return Dataset.from_dict(self._http.request("GET", f"/datasets/{dataset_id}"))

    async def get_dataset_async(self, dataset_id: str) -> Dataset:
        """Async `get_dataset`."""
        return Dataset.from_dict(await self._ahttp.request("GET", f"/datasets/{dataset_id}"))

    def list_datasets(self) -> list[Dataset]:
        """All of the tenant's datasets, newest first."""
        return [Dataset.from_dict(d) for d in self._pages("/datasets", "datasets", {})]

    async def list_datasets_async(self) -> list[Dataset]:
        """Async `list_datasets`."""
        return [Dataset.from_dict(d) for d in await self._pages_async("/datasets", "datasets", {})]

    # ------------------------------------------------------------ artifacts

    def get_artifact(self, artifact_id: str) -> SaveStateResult:
        """`GET /artifacts/{id}` (metadata only)."""
        return SaveStateResult.from_dict(self._http.request("GET", f"/artifacts/{artifact_id}"))

    async def get_artifact_async(self, artifact_id: str) -> SaveStateResult:
        """Async `get_artifact`."""
        return SaveStateResult.from_dict(await self._ahttp.request("GET", f"/artifacts/{artifact_id}"))

    def download_package(self, artifact_id: str) -> bytes:
        """The bytes of a package artifact (`.tssp`); verify them with `tensafe package verify`."""
        return self._http.request("GET", f"/artifacts/{artifact_id}/content")

    async def download_package_async(self, artifact_id: str) -> bytes:
        """Async `download_package`."""
        return await self._ahttp.request("GET", f"/artifacts/{artifact_id}/content")

    def list_artifacts(self, client_id: str | None = None) -> list[SaveStateResult]:
        """The tenant's artifacts, optionally of one training client, newest first."""
        items = self._pages("/artifacts", "artifacts", {"client_id": client_id})
        return [SaveStateResult.from_dict(d) for d in items]

    async def list_artifacts_async(self, client_id: str | None = None) -> list[SaveStateResult]:
        """Async `list_artifacts`."""
        items = await self._pages_async("/artifacts", "artifacts", {"client_id": client_id})
        return [SaveStateResult.from_dict(d) for d in items]
