"""A tiny in-memory stand-in for the gateway, for SDK transport tests only.

It implements a subset of docs/API.md faithfully enough to exercise the SDK (auth, errors,
idempotency, ordered per-client execution, long-poll futures, cancel, faults on demand). It does
no ML: losses and ε are made-up numbers. Served by uvicorn on 127.0.0.1 in a background thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

API_KEY = "tml-tenant-a"
OTHER_KEY = "tml-tenant-b"
KEYS = {API_KEY: "tenant-a", OTHER_KEY: "tenant-b", "your-api-key": "tenant-a"}
TERMINAL = {"completed", "failed", "cancelled"}
EPS_PER_STEP = 0.5


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".000Z"


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str = "",
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or code)
        self.status, self.code, self.message = status, code, message or code
        self.details, self.headers = details or {}, headers or {}


@dataclass
class Fault:
    """Answer `status` instead of handling (or after handling, if `after`), `times` times."""

    match: str
    status: int
    times: int = 1
    code: str | None = None
    retry_after: str | None = None
    after: bool = False


@dataclass
class FakeFuture:
    future_id: str
    tenant: str
    type: str
    client_id: str
    body: dict[str, Any]
    status: str = "pending"
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    created_at: str = field(default_factory=now_iso)

    def view(self) -> dict[str, Any]:
        return {
            "future_id": self.future_id,
            "type": self.type,
            "client_id": self.client_id,
            "status": self.status,
            "created_at": self.created_at,
            "updated_at": now_iso(),
            "result": self.result if self.status == "completed" else None,
            "error": self.error if self.status in ("failed", "cancelled") else None,
        }


class FakeGateway:
    def __init__(self) -> None:
        self.clients: dict[str, dict[str, Any]] = {}
        self.futures: dict[str, FakeFuture] = {}
        self.queues: dict[str, list[str]] = {}
        self.datasets: dict[str, dict[str, Any]] = {}
        self.artifacts: dict[str, dict[str, Any]] = {}
        self.audit: list[dict[str, Any]] = []
        self.idem: dict[tuple[str, str], tuple[str, int, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.executed: list[tuple[str, str, str]] = []
        self.faults: list[Fault] = []
        self.paused = False
        self.exec_delay = 0.0
        self.tamper_dataset_hash = False
        self._lock = threading.Lock()
        self.app = Starlette(routes=self._routes())

    # ------------------------------------------------------------ test controls

    def fault(self, match: str, status: int, **kw: Any) -> None:
        with self._lock:
            self.faults.append(Fault(match, status, **kw))

    def requests_to(self, suffix: str, method: str = "POST") -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].endswith(suffix) and r["method"] == method]

    # ------------------------------------------------------------ plumbing

    def _routes(self) -> list[Route]:
        r = self._wrap
        return [
            Route("/api/v1/healthz", r(self.healthz, auth=False), methods=["GET"]),
            Route("/api/v1/models", r(self.models), methods=["GET"]),
            Route("/api/v1/training_clients", r(self.create_client), methods=["POST"]),
            Route("/api/v1/training_clients", r(self.list_clients), methods=["GET"]),
            Route("/api/v1/training_clients/{cid}", r(self.get_client), methods=["GET"]),
            Route("/api/v1/training_clients/{cid}/dp_metrics", r(self.dp_metrics), methods=["GET"]),
            Route("/api/v1/training_clients/{cid}/audit_logs", r(self.audit_logs), methods=["GET"]),
            Route("/api/v1/training_clients/{cid}/{op}", r(self.submit), methods=["POST"]),
            Route("/api/v1/futures", r(self.batch_futures), methods=["GET"]),
            Route("/api/v1/futures/{fid}", r(self.get_future), methods=["GET"]),
            Route("/api/v1/futures/{fid}", r(self.cancel_future), methods=["DELETE"]),
            Route("/api/v1/futures/{fid}/cancel", r(self.cancel_future), methods=["POST"]),
            Route("/api/v1/datasets", r(self.create_dataset), methods=["POST"]),
            Route("/api/v1/datasets", r(self.list_datasets), methods=["GET"]),
            Route("/api/v1/datasets/{did}", r(self.get_dataset), methods=["GET"]),
            Route("/api/v1/artifacts", r(self.list_artifacts), methods=["GET"]),
            Route("/api/v1/artifacts/{aid}", r(self.get_artifact), methods=["GET"]),
        ]

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.times > 0 and f.match in path:
                    f.times -= 1
                    return f
        return None

    @staticmethod
    def _error(
        status: int,
        code: str,
        message: str,
        details: dict[str, Any],
        rid: str,
        headers: dict[str, str] | None = None,
    ) -> JSONResponse:
        body = {"error": {"code": code, "message": message, "details": details, "request_id": rid}}
        return JSONResponse(body, status_code=status, headers={"X-Request-Id": rid, **(headers or {})})

    def _fault_response(self, f: Fault, rid: str) -> Response:
        code = f.code or {
            408: "request_timeout",
            429: "rate_limited",
            500: "internal_error",
            502: "bad_gateway",
            503: "unavailable",
            504: "upstream_timeout",
        }.get(f.status, "invalid_request")
        headers = {"Retry-After": f.retry_after} if f.retry_after is not None else {}
        return self._error(f.status, code, "injected fault", {}, rid, headers)

    def _wrap(self, handler: Any, auth: bool = True) -> Any:
        async def endpoint(request: Request) -> Response:
            rid = request.headers.get("x-request-id") or "req_" + uuid.uuid4().hex
            raw = await request.body()
            self.requests.append(
                {
                    "method": request.method,
                    "path": request.url.path,
                    "query": dict(request.query_params),
                    "idempotency_key": request.headers.get("idempotency-key"),
                    "t": time.monotonic(),
                    "authorization": request.headers.get("authorization"),
                    "user_agent": request.headers.get("user-agent"),
                }
            )
            fault = self._take_fault(request.url.path)
            if fault and not fault.after:
                return self._fault_response(fault, rid)
            try:
                tenant = self._auth(request) if auth else ""
                body: dict[str, Any] = {}
                if request.method == "POST":
                    if not request.headers.get("content-type", "").startswith("application/json"):
                        raise ApiError(415, "unsupported_media_type")
                    try:
                        body = json.loads(raw or b"{}")
                    except ValueError as exc:
                        raise ApiError(400, "invalid_request", "body is not JSON") from exc
                    if not isinstance(body, dict):
                        raise ApiError(400, "invalid_request", "body must be an object")
                    status, payload = await self._idempotent(request, tenant, body, handler)
                else:
                    status, payload = await handler(request, tenant, body)
            except ApiError as e:
                return self._error(e.status, e.code, e.message, e.details, rid, e.headers)
            if fault and fault.after:  # processed, but the answer is "lost"
                return self._fault_response(fault, rid)
            return JSONResponse(payload, status_code=status, headers={"X-Request-Id": rid})

        return endpoint

    def _auth(self, request: Request) -> str:
        key = None
        authz = request.headers.get("authorization", "")
        if authz.startswith("Bearer "):
            key = authz[len("Bearer ") :]
        key = key or request.headers.get("x-api-key")
        if key not in KEYS:
            raise ApiError(
                401, "unauthenticated", "bad API key", headers={"WWW-Authenticate": 'Bearer realm="tensafe"'}
            )
        return KEYS[key]

    async def _idempotent(
        self, request: Request, tenant: str, body: dict[str, Any], handler: Any
    ) -> tuple[int, Any]:
        key = request.headers.get("idempotency-key")
        if key is None:
            return await handler(request, tenant, body)
        fp = hashlib.sha256(f"POST\n{request.url.path}\n".encode() + canonical(body)).hexdigest()
        stored = self.idem.get((tenant, key))
        if stored is not None:
            if stored[0] != fp:
                raise ApiError(
                    409, "idempotency_conflict", "key reused with another body", {"idempotency_key": key}
                )
            return stored[1], stored[2]
        status, payload = await handler(request, tenant, body)
        self.idem[(tenant, key)] = (fp, status, payload)
        return status, payload

    # ------------------------------------------------------------ ledger / worker

    def _append_audit(self, client_id: str, event_type: str, command_id: str | None) -> None:
        prev = (
            self.audit[-1]["hash"]
            if self.audit
            else hashlib.sha256(b"tensafe/ledger/v1/genesis/0").hexdigest()
        )
        seq = len(self.audit)
        value = canonical({"client_id": client_id, "event_type": event_type, "seq": seq})
        h = hashlib.sha256(bytes.fromhex(prev) + value).hexdigest()
        self.audit.append(
            {
                "seq": seq,
                "partition": 0,
                "epoch": 1,
                "event_type": event_type,
                "event_id": uuid.uuid4().hex,
                "ts_ms": int(time.time() * 1000),
                "hash": h,
                "prev_hash": prev,
                "command_id": command_id,
                "_client": client_id,
            }
        )
        self.clients[client_id]["last_event_seq"] = seq

    def _enqueue(self, fut: FakeFuture) -> None:
        self.futures[fut.future_id] = fut
        self.queues.setdefault(fut.client_id, []).append(fut.future_id)
        if len(self.queues[fut.client_id]) == 1:
            asyncio.get_running_loop().create_task(self._worker(fut.client_id))

    async def _worker(self, client_id: str) -> None:
        queue = self.queues[client_id]
        while queue:
            while self.paused:
                await asyncio.sleep(0.01)
            fut = self.futures[queue[0]]
            if fut.status == "pending":
                fut.status = "running"
                if self.exec_delay:
                    await asyncio.sleep(self.exec_delay)
                try:
                    fut.result = self._execute(fut)
                    fut.status = "completed"
                except ApiError as e:
                    fut.error = {"code": e.code, "message": e.message, "details": e.details}
                    fut.status = "failed"
                self._append_audit(client_id, f"tensafe.event.{fut.type}.{fut.status}", fut.future_id)
            queue.pop(0)

    def _execute(self, fut: FakeFuture) -> dict[str, Any]:
        c = self.clients[fut.client_id]
        self.executed.append((fut.client_id, fut.type, fut.future_id))
        b = fut.body
        if fut.type == "create_training_client":
            c["status"] = "ready"
            return self._client_view(c)
        if fut.type == "forward_backward":
            rows = b["batch"]["input_ids"] if "batch" in b else [d["tokens"] for d in b["data"]]
            ntok = sum(len(r) for r in rows)
            c["accum"] += len(rows)
            out = {
                "loss": 2.0 / (1 + c["step"]),
                "loss_sum": 2.0 * ntok / (1 + c["step"]),
                "num_tokens": ntok,
                "num_samples": len(rows),
                "clip": {
                    "max_grad_norm": c["dp"]["max_grad_norm"],
                    "fraction_clipped": 0.5,
                    "mean_norm": 1.2,
                    "max_norm": 3.0,
                },
            }
            if b.get("return_logprobs"):
                out["logprobs"] = [[-1.0] * len(r) for r in rows]
            return out
        if fut.type == "optim_step":
            after = c["eps"] + EPS_PER_STEP
            if after > c["dp"]["target_epsilon"]:
                raise ApiError(
                    0,
                    "budget_exceeded",
                    "step would exceed target epsilon",
                    {
                        "epsilon_spent": c["eps"],
                        "epsilon_after_step": after,
                        "target_epsilon": c["dp"]["target_epsilon"],
                    },
                )
            c["eps"], c["step"], n, c["accum"] = after, c["step"] + 1, c["accum"], 0
            lr = (b.get("adam_params") or {}).get("learning_rate", 1e-4)
            return {
                "step": c["step"],
                "epsilon_spent": c["eps"],
                "epsilon_remaining": c["dp"]["target_epsilon"] - c["eps"],
                "noise_multiplier": 1.0,
                "sample_rate": 0.01,
                "num_samples": n,
                "learning_rate": lr,
            }
        if fut.type == "sample":
            prompts = b.get("prompts") or [" ".join(map(str, t)) for t in b["prompt_tokens"]]
            samples = []
            for i, p in enumerate(prompts):
                for j in range(b.get("num_samples", 1)):
                    text = f"answer {j} to {p}"
                    samples.append(
                        {
                            "prompt_index": i,
                            "completion": text,
                            "tokens": [1, 2, 3],
                            "logprobs": [-0.1, -0.2, -0.3],
                            "finish_reason": "length",
                            "prompt_tokens": len(p.split()),
                            "completion_tokens": 3,
                        }
                    )
            return {"samples": samples, "model_step": c["step"]}
        if fut.type == "save_state":
            aid = "art_" + uuid.uuid4().hex[:12]
            art = {
                "artifact_id": aid,
                "name": b.get("name") or f"step-{c['step']}",
                "client_id": c["client_id"],
                "step": c["step"],
                "content_hash": "sha256:" + hashlib.sha256(aid.encode()).hexdigest(),
                "encryption": {"algorithm": "AES-256-GCM", "key_id": "key-" + c["tenant"]},
                "size": 4096,
                "include_optimizer": b.get("include_optimizer", True),
                "metadata": b.get("metadata") or {},
                "created_at": now_iso(),
                "dp_certificate": {
                    "epsilon": c["eps"],
                    "delta": c["dp"]["target_delta"],
                    "accountant": "rdp",
                    "sampling_mode": "client_batches",
                    "guarantee": "unamplified",
                    "steps": c["step"],
                    "ledger_seq": len(self.audit),
                },
            }
            self.artifacts[aid] = {**art, "_tenant": c["tenant"]}
            return art
        if fut.type == "load_state":
            art = self.artifacts.get(b["artifact_id"])
            if art is None or art["_tenant"] != c["tenant"]:
                raise ApiError(0, "not_found", "no such artifact", {"resource": "artifact"})
            c["step"] = art["step"]
            return {
                "artifact_id": art["artifact_id"],
                "step": art["step"],
                "loaded_optimizer": b.get("load_optimizer", True),
            }
        if fut.type == "train_step":
            c["step"] += 1
            c["eps"] += EPS_PER_STEP
            return {"step": c["step"], "loss": 1.0, "num_samples": 3, "epsilon_spent": c["eps"]}
        raise ApiError(0, "internal_error", f"unknown op {fut.type}")

    # ------------------------------------------------------------ views and lookups

    def _client_view(self, c: dict[str, Any]) -> dict[str, Any]:
        return {
            "client_id": c["client_id"],
            "status": c["status"],
            "model_ref": c["model_ref"],
            "step": c["step"],
            "created_at": c["created_at"],
            "lora_config": c["lora_config"],
            "batch_size": c["batch_size"],
            "dataset_id": c["dataset_id"],
            "metadata": c["metadata"],
            "dp": {**c["dp"], "epsilon_spent": c["eps"], "guarantee": "unamplified", "sample_rate": 1.0},
            "last_event_seq": c["last_event_seq"],
        }

    def _client(self, tenant: str, cid: str) -> dict[str, Any]:
        c = self.clients.get(cid)
        if c is None or c["tenant"] != tenant:
            raise ApiError(404, "not_found", "no such training client", {"resource": "training_client"})
        return c

    def _future(self, tenant: str, fid: str) -> FakeFuture:
        f = self.futures.get(fid)
        if f is None or f.tenant != tenant:
            raise ApiError(404, "not_found", "no such future", {"resource": "future"})
        return f

    # ------------------------------------------------------------ handlers

    async def healthz(self, request: Request, tenant: str, body: dict[str, Any]) -> tuple[int, Any]:
        return 200, {"status": "ok", "version": "fake"}

    async def models(self, request: Request, tenant: str, body: dict[str, Any]) -> tuple[int, Any]:
        return 200, {
            "models": [
                {
                    "model_ref": "meta-llama/Llama-3-8B",
                    "max_context_length": 8192,
                    "vocab_size": 128256,
                    "trainable": True,
                    "sampleable": True,
                }
            ]
        }

    async def create_client(self, request: Request, tenant: str, body: dict[str, Any]) -> tuple[int, Any]:
        unknown = set(body) - {
            "model_ref",
            "lora_config",
            "dp_config",
            "batch_size",
            "seed",
            "dataset_id",
            "metadata",
        }
        if unknown or not isinstance(body.get("model_ref"), str):
            raise ApiError(
                400,
                "schema_violation",
                "bad body",
                {"errors": [{"path": k, "message": "unknown field"} for k in sorted(unknown)]},
            )
        cid = "tc_" + uuid.uuid4().hex[:12]
        dp = {
            "enabled": True,
            "noise_multiplier": 1.0,
            "max_grad_norm": 1.0,
            "target_epsilon": 8.0,
            "target_delta": 1e-5,
            "accountant": "rdp",
            "sampling": "client_batches",
            **(body.get("dp_config") or {}),
        }
        self.clients[cid] = {
            "client_id": cid,
            "tenant": tenant,
            "status": "creating",
            "model_ref": body["model_ref"],
            "step": 0,
            "created_at": now_iso(),
            "lora_config": body.get("lora_config") or {},
            "batch_size": body.get("batch_size", 8),
            "dataset_id": body.get("dataset_id"),
            "metadata": body.get("metadata") or {},
            "dp": dp,
            "eps": 0.0,
            "accum": 0,
            "last_event_seq": None,
        }
        fid = "fut_" + uuid.uuid4().hex
        self._enqueue(FakeFuture(fid, tenant, "create_training_client", cid, body))
        return 202, {
            "client_id": cid,
            "future_id": fid,
            "type": "create_training_client",
            "status": "pending",
        }

    async def list_clients(self, request: Request, tenant: str, body: dict[str, Any]) -> tuple[int, Any]:
        items = [self._client_view(c) for c in reversed(self.clients.values()) if c["tenant"] == tenant]
        # two-item pages, to exercise the SDK's pagination
        start = int(request.query_params.get("cursor") or 0)
        nxt = str(start + 2) if start + 2 < len(items) else None
        return 200, {"training_clients": items[start : start + 2], "next_cursor": nxt}

    async def get_client(self, request: Request, tenant: str, body: dict[str, Any]) -> tuple[int, Any]:
        return 200, self._client_view(self._client(tenant, request.path_params["cid"]))

    async def submit(self, request: Request, tenant: str, body: dict[str, Any]) -> tuple[int, Any]:
        op = request.path_params["op"]
        if op not in ("forward_backward", "optim_step", "train_step", "sample", "save_state", "load_state"):
            raise ApiError(404, "not_found", "no such route")
        c = self._client(tenant, request.path_params["cid"])
        if op == "forward_backward":
            if ("batch" in body) == ("data" in body):
                raise ApiError(
                    400,
                    "schema_violation",
                    "exactly one of batch or data",
                    {"errors": [{"path": "batch", "message": "exactly one of batch or data"}]},
                )
            rows = body["batch"]["input_ids"] if "batch" in body else body["data"]
            if len(rows) > 256:
                raise ApiError(
                    400,
                    "schema_violation",
                    "too many rows",
                    {"errors": [{"path": "batch.input_ids", "message": "at most 256 rows"}]},
                )
        if (
            op in ("optim_step", "train_step")
            and c["eps"] + EPS_PER_STEP > c["dp"]["target_epsilon"]
            and not self.queues.get(c["client_id"])
        ):
            raise ApiError(
                422,
                "budget_exceeded",
                "privacy budget spent",
                {"epsilon_spent": c["eps"], "target_epsilon": c["dp"]["target_epsilon"]},
            )
        if op == "train_step" and c["dataset_id"] is None:
            raise ApiError(
                409, "conflict", "train_step needs a registered dataset", {"reason": "sampling_mode"}
            )
        fid = "fut_" + uuid.uuid4().hex
        self._enqueue(FakeFuture(fid, tenant, op, c["client_id"], body))
        return 202, {"future_id": fid, "type": op, "client_id": c["client_id"], "status": "pending"}

    async def dp_metrics(self, request: Request, tenant: str, body: dict[str, Any]) -> tuple[int, Any]:
        c = self._client(tenant, request.path_params["cid"])
        t = c["dp"]["target_epsilon"]
        return 200, {
            "enabled": True,
            "epsilon_spent": c["eps"],
            "epsilon_remaining": max(0.0, t - c["eps"]),
            "target_epsilon": t,
            "delta": c["dp"]["target_delta"],
            "steps": c["step"],
            "noise_multiplier": c["dp"]["noise_multiplier"],
            "max_grad_norm": c["dp"]["max_grad_norm"],
            "sample_rate": 1.0,
            "accountant": c["dp"]["accountant"],
            "sampling_mode": "client_batches",
            "guarantee": "unamplified",
        }

    async def audit_logs(self, request: Request, tenant: str, body: dict[str, Any]) -> tuple[int, Any]:
        c = self._client(tenant, request.path_params["cid"])
        after = request.query_params.get("after_seq")
        limit = int(request.query_params.get("limit", 100))
        mine = [
            {k: v for k, v in e.items() if k != "_client"}
            for e in self.audit
            if e["_client"] == c["client_id"] and (after is None or e["seq"] > int(after))
        ]
        page = mine[:limit]
        nxt = page[-1]["seq"] if page else (int(after) if after is not None else None)
        return 200, {"entries": page, "next_after_seq": nxt, "has_more": len(mine) > limit}

    async def get_future(self, request: Request, tenant: str, body: dict[str, Any]) -> tuple[int, Any]:
        fut = self._future(tenant, request.path_params["fid"])
        try:
            wait = float(request.query_params.get("wait", 0))
        except ValueError as exc:
            raise ApiError(400, "invalid_request", "wait must be a number", {"parameter": "wait"}) from exc
        if wait < 0:
            raise ApiError(400, "invalid_request", "wait must be >= 0", {"parameter": "wait"})
        deadline = time.monotonic() + min(wait, 30.0)
        while fut.status not in TERMINAL and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        return 200, fut.view()

    async def batch_futures(self, request: Request, tenant: str, body: dict[str, Any]) -> tuple[int, Any]:
        ids = [i for i in (request.query_params.get("ids") or "").split(",") if i]
        if len(ids) > 100:
            raise ApiError(400, "invalid_request", "at most 100 ids", {"parameter": "ids"})
        out = [self.futures[i].view() for i in ids if i in self.futures and self.futures[i].tenant == tenant]
        return 200, {"futures": out}

    async def cancel_future(self, request: Request, tenant: str, body: dict[str, Any]) -> tuple[int, Any]:
        fut = self._future(tenant, request.path_params["fid"])
        if fut.status == "pending":
            fut.status = "cancelled"
            fut.error = {"code": "cancelled", "message": "cancelled by the client", "details": {}}
        elif fut.status != "cancelled":
            raise ApiError(
                409,
                "conflict",
                "future is not pending",
                {"reason": "future_not_pending", "status": fut.status},
            )
        return 200, fut.view()

    async def create_dataset(self, request: Request, tenant: str, body: dict[str, Any]) -> tuple[int, Any]:
        if ("records" in body) == ("token_records" in body):
            raise ApiError(400, "schema_violation", "exactly one of records or token_records")
        records = body.get("records", body.get("token_records"))
        did = "ds_" + uuid.uuid4().hex[:12]
        digest = hashlib.sha256(canonical(records) + (b"x" if self.tamper_dataset_hash else b"")).hexdigest()
        ds = {
            "dataset_id": did,
            "name": body["name"],
            "num_records": len(records),
            "content_hash": "sha256:" + digest,
            "metadata": body.get("metadata") or {},
            "created_at": now_iso(),
        }
        self.datasets[did] = {**ds, "_tenant": tenant}
        return 201, ds

    async def list_datasets(self, request: Request, tenant: str, body: dict[str, Any]) -> tuple[int, Any]:
        items = [
            {k: v for k, v in d.items() if k != "_tenant"}
            for d in self.datasets.values()
            if d["_tenant"] == tenant
        ]
        return 200, {"datasets": items[::-1], "next_cursor": None}

    async def get_dataset(self, request: Request, tenant: str, body: dict[str, Any]) -> tuple[int, Any]:
        d = self.datasets.get(request.path_params["did"])
        if d is None or d["_tenant"] != tenant:
            raise ApiError(404, "not_found", "no such dataset", {"resource": "dataset"})
        return 200, {k: v for k, v in d.items() if k != "_tenant"}

    async def list_artifacts(self, request: Request, tenant: str, body: dict[str, Any]) -> tuple[int, Any]:
        cid = request.query_params.get("client_id")
        items = [
            {k: v for k, v in a.items() if k != "_tenant"}
            for a in self.artifacts.values()
            if a["_tenant"] == tenant and (cid is None or a["client_id"] == cid)
        ]
        return 200, {"artifacts": items[::-1], "next_cursor": None}

    async def get_artifact(self, request: Request, tenant: str, body: dict[str, Any]) -> tuple[int, Any]:
        a = self.artifacts.get(request.path_params["aid"])
        if a is None or a["_tenant"] != tenant:
            raise ApiError(404, "not_found", "no such artifact", {"resource": "artifact"})
        return 200, {k: v for k, v in a.items() if k != "_tenant"}


class ServerThread:
    """uvicorn serving a FakeGateway on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, gateway: FakeGateway) -> None:
        self.gateway = gateway
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # uvicorn does not set TCP_NODELAY on sockets handed to it: without this, Nagle + delayed ACK
        # add ~40 ms to every response. Accepted connections inherit the option.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(gateway.app, log_level="critical", lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("fake gateway did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
