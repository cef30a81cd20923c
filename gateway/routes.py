"""The TenSafe REST API v1 (docs/API.md): thin handlers over ``GatewayService``.

Each POST: authenticate -> Idempotency-Key -> read JSON (size limit) ->
fingerprint -> reserve the key -> validate, check state, build, seal, publish
-> 2xx. Each GET: authenticate -> read the tenant's part of the read model.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from tensafe.gateway import builders, ids, views
from tensafe.gateway import validation as v
from tensafe.gateway.auth import Principal
from tensafe.gateway.errors import ApiError, conflict, invalid_request, not_found, one_violation
from tensafe.gateway.http import idempotency_key, json_response, query_int, query_wait, read_json
from tensafe.gateway.openapi import openapi_document
from tensafe.gateway.ratelimit import RateLimiter
from tensafe.gateway.service import GatewayService, Prepared, Submitted
from tensafe.gateway.settings import ModelSpec

PREFIX = "/api/v1"


def _cursor_out(order: int) -> str:
    return base64.urlsafe_b64encode(f"o{order}".encode()).decode().rstrip("=")


def _cursor_in(request: Request) -> int | None:
    raw = request.query_params.get("cursor")
    if raw is None or raw == "":
        return None
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        if not text.startswith("o"):
            raise ValueError
        return int(text[1:])
    except (ValueError, UnicodeDecodeError):
        raise invalid_request("cursor is not one this server issued", "cursor") from None


def _page(request: Request, items: list[Any], render: Callable[[Any], dict[str, Any]], name: str) -> Response:
    """``items`` newest first (descending ``order``); API.md §1 pagination."""
    limit = query_int(request, "limit", 50, 1, 200)
    assert limit is not None
    cursor = _cursor_in(request)
    if cursor is not None:
        items = [i for i in items if i.order < cursor]
    page = items[:limit]
    more = len(items) > limit
    return json_response(
        {name: [render(i) for i in page], "next_cursor": _cursor_out(page[-1].order) if more else None}
    )


class RestApi:
    def __init__(self, service: GatewayService) -> None:
        self.svc = service
        self.settings = service.settings
        rps = self.settings.rate_limit_rps
        self.limiter = RateLimiter(rps, self.settings.rate_limit_burst) if rps else None

    # -- helpers --------------------------------------------------------------------------
    async def _who(self, request: Request, *, write: bool = False) -> Principal:
        who = await self.svc.auth.authenticate(request, write=write)
        if self.limiter is not None:
            self.limiter.check(who.tenant_id)
        return who

    def _spec(self, model_ref: str | None) -> ModelSpec:
        spec = self.settings.model(model_ref or "")
        if spec is None:  # a client of a model this gateway no longer lists: bound by the largest context
            spec = ModelSpec(model_ref or "", self.settings.max_context_length, v.INT31 + 1)
        return spec

    def _seal(self, tenant_id: str, context: str, schema: str, record: dict[str, Any]) -> bytes:
        assert self.svc.publisher is not None
        return self.svc.publisher.seal_record(tenant_id, context, schema, record)

    async def _post(
        self,
        request: Request,
        build: Callable[[Principal, str, dict[str, Any]], Prepared | Awaitable[Prepared]],
        *,
        limit: int | None = None,
    ) -> Response:
        who = await self._who(request, write=True)
        key = idempotency_key(request)
        body = await read_json(request, limit or self.settings.max_body_bytes)
        fp = ids.fingerprint("POST", request.url.path, body)
        async with self.svc.idempotency.reserve(who.tenant_id, key, fp) as res:
            sub = await self.svc.submit(who.tenant_id, res, lambda cmd_id: build(who, cmd_id, body))
        return self._answer(sub)

    @staticmethod
    def _answer(sub: Submitted) -> Response:
        headers: dict[str, str] = {}
        fid = sub.body.get("future_id")
        if sub.status == 202 and isinstance(fid, str):
            headers["Location"] = f"{PREFIX}/futures/{fid}"
        if sub.replayed:
            headers["Idempotent-Replayed"] = "true"
        return json_response(sub.body, sub.status, headers)

    # -- service ------------------------------------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        reasons = await self.svc.health()
        if reasons:
            return json_response(
                {"status": "degraded", "version": self.settings.version, "reasons": reasons}, 503
            )
        return json_response({"status": "ok", "version": self.settings.version})

    async def openapi(self, request: Request) -> Response:
        return json_response(openapi_document(self.settings))

    async def models(self, request: Request) -> Response:
        await self._who(request)
        return json_response({"models": [m.to_json() for m in self.settings.models]})

    # -- training clients ----------------------------------------------------------------------
    async def create_client(self, request: Request) -> Response:
        async def build(who: Principal, cmd_id: str, body: dict[str, Any]) -> Prepared:
            req = v.parse(v.CreateTrainingClient, body)
            spec = self.settings.model(req.model_ref)
            if spec is None:
                known = ", ".join(m.model_ref for m in self.settings.models)
                raise one_violation("model_ref", f"unknown model (GET /models lists: {known})")
            if not spec.trainable:
                raise one_violation("model_ref", "this model cannot be trained")
            dataset = None
            if req.dataset_id is not None:
                dataset = self.svc.model.dataset(who.tenant_id, req.dataset_id)
                if dataset is None:
                    raise not_found("dataset")
                sampling = (req.dp_config.sampling if req.dp_config else None) or "poisson"
                if sampling == "poisson":
                    await self.svc.dataset_ready(dataset)
            return builders.create_training_client(who.tenant_id, cmd_id, req, spec, dataset)

        return await self._post(request, build)

    async def list_clients(self, request: Request) -> Response:
        who = await self._who(request)
        return _page(
            request, self.svc.model.listing(who.tenant_id, "clients"), views.client_json, "training_clients"
        )

    async def get_client(self, request: Request) -> Response:
        who = await self._who(request)
        c = self.svc.client_for(who.tenant_id, request.path_params["client_id"])
        return json_response(views.client_json(c))

    async def forward_backward(self, request: Request) -> Response:
        def build(who: Principal, cmd_id: str, body: dict[str, Any]) -> Prepared:
            req = v.parse(v.ForwardBackward, body)
            c = self.svc.client_for(
                who.tenant_id, request.path_params["client_id"], command="ForwardBackward"
            )
            v.check_forward_backward(req, self._spec(c.create.get("model_ref")), self.settings.max_batch_rows)
            return builders.forward_backward(self._seal, who.tenant_id, cmd_id, c, req)

        return await self._post(request, build)

    async def optim_step(self, request: Request) -> Response:
        def build(who: Principal, cmd_id: str, body: dict[str, Any]) -> Prepared:
            req = v.parse(v.OptimStep, body)
            c = self.svc.client_for(who.tenant_id, request.path_params["client_id"], command="OptimStep")
            return builders.optim_step(who.tenant_id, cmd_id, c, req)

        return await self._post(request, build)

    async def train_step(self, request: Request) -> Response:
        def build(who: Principal, cmd_id: str, body: dict[str, Any]) -> Prepared:
            req = v.parse(v.TrainStep, body)
            c = self.svc.client_for(who.tenant_id, request.path_params["client_id"], command="TrainStep")
            return builders.train_step(who.tenant_id, cmd_id, c, req, self._spec(c.create.get("model_ref")))

        return await self._post(request, build)

    async def sample(self, request: Request) -> Response:
        def build(who: Principal, cmd_id: str, body: dict[str, Any]) -> Prepared:
            req = v.parse(v.Sample, body)
            c = self.svc.client_for(who.tenant_id, request.path_params["client_id"], command="Sample")
            spec = self._spec(c.create.get("model_ref"))
            if not spec.sampleable:
                raise conflict("not_sampleable", "this model cannot sample")
            v.check_sample(req, spec, self.settings.max_prompts)
            return builders.sample(self._seal, who.tenant_id, cmd_id, c, req)

        return await self._post(request, build)

    async def save_state(self, request: Request) -> Response:
        def build(who: Principal, cmd_id: str, body: dict[str, Any]) -> Prepared:
            req = v.parse(v.SaveState, body)
            c = self.svc.client_for(who.tenant_id, request.path_params["client_id"], command="SaveState")
            step = c.step + self.svc.model.pending_steps(c.client_id)
            return builders.save_state(who.tenant_id, cmd_id, c, req, step)

        return await self._post(request, build)

    async def create_package(self, request: Request) -> Response:
        def build(who: Principal, cmd_id: str, body: dict[str, Any]) -> Prepared:
            req = v.parse(v.CreatePackage, body)
            c = self.svc.client_for(who.tenant_id, request.path_params["client_id"], command="CreatePackage")
            step = c.step + self.svc.model.pending_steps(c.client_id)
            return builders.create_package(who.tenant_id, cmd_id, c, req, step)

        return await self._post(request, build)

    async def artifact_content(self, request: Request) -> Response:
        """The bytes of a package (already encrypted to its recipients). Checkpoints and
        datasets never leave the service: their keys are the tenant's own."""
        who = await self._who(request)
        a = self.svc.model.artifact(who.tenant_id, request.path_params["artifact_id"])
        if a is None:
            raise not_found("artifact")
        store = self.settings.extra.get("artifact_store")
        if a.kind != "package":
            raise conflict(
                "not_downloadable", "only packages can be downloaded; checkpoints stay in the service"
            )
        if store is None:
            raise ApiError(503, "unavailable", "this gateway has no artifact store", {})
        data = await asyncio.to_thread(store.get, who.tenant_id, a.artifact_id)
        return Response(
            data,
            media_type="application/vnd.tensafe.tssp+zip",
            headers={"Content-Disposition": f'attachment; filename="{a.artifact_id}.tssp"'},
        )

    async def load_state(self, request: Request) -> Response:
        def build(who: Principal, cmd_id: str, body: dict[str, Any]) -> Prepared:
            req = v.parse(v.LoadState, body)
            c = self.svc.client_for(who.tenant_id, request.path_params["client_id"], command="LoadState")
            a = self.svc.model.artifact(who.tenant_id, req.artifact_id)
            if a is None:
                raise not_found("artifact")
            if a.kind != "checkpoint":
                raise conflict("not_a_checkpoint", "the artifact is not a training checkpoint")
            return builders.load_state(who.tenant_id, cmd_id, c, req)

        return await self._post(request, build)

    async def dp_metrics(self, request: Request) -> Response:
        who = await self._who(request)
        c = self.svc.client_for(who.tenant_id, request.path_params["client_id"])
        return json_response(views.dp_metrics_json(c))

    async def audit_logs(self, request: Request) -> Response:
        who = await self._who(request)
        c = self.svc.client_for(who.tenant_id, request.path_params["client_id"])
        after = query_int(request, "after_seq", None, -1, 2**63 - 1)
        limit = query_int(request, "limit", 100, 1, 1000)
        assert limit is not None
        entries = self.svc.model.audit.get(c.client_id, [])
        start = 0 if after is None else bisect.bisect_right(entries, after, key=lambda e: e.seq)
        page = entries[start : start + limit]
        return json_response(
            {
                "entries": [views.audit_json(e) for e in page],
                "next_after_seq": page[-1].seq if page else after,
                "has_more": start + limit < len(entries),
            }
        )

    # -- futures ---------------------------------------------------------------------------------
    async def get_future(self, request: Request) -> Response:
        who = await self._who(request)
        wait = query_wait(request, self.settings.max_wait_s)
        f = self.svc.future_for(who.tenant_id, request.path_params["future_id"])
        f = await self.svc.wait(f, wait)
        return json_response(views.future_json(f, self.svc.model, self.settings.keyring))

    async def list_futures(self, request: Request) -> Response:
        who = await self._who(request)
        raw = request.query_params.get("ids")
        if raw is None:
            raise invalid_request("ids is required (comma-separated future ids)", "ids")
        wanted = [x for x in raw.split(",") if x]
        if len(wanted) > 100:
            raise invalid_request("at most 100 ids", "ids")
        out = []
        for fid in wanted:
            cmd_id = ids.command_id_of(fid)
            f = self.svc.model.future(who.tenant_id, cmd_id) if cmd_id else None
            if f is not None:
                out.append(views.future_json(f, self.svc.model, self.settings.keyring))
        return json_response({"futures": out})

    async def cancel_future(self, request: Request) -> Response:
        who = await self._who(request, write=True)
        if request.method == "POST":
            v.parse(v.CancelBody, await read_json(request, self.settings.max_body_bytes))
        f = self.svc.future_for(who.tenant_id, request.path_params["future_id"])
        status, f, confirmed = await self.svc.cancel(who.tenant_id, f)
        body = views.future_json(f, self.svc.model, self.settings.keyring)
        if not confirmed:
            body["cancel_requested"] = True
        return json_response(body, status)

    # -- datasets and artifacts --------------------------------------------------------------------
    async def create_dataset(self, request: Request) -> Response:
        def build(who: Principal, cmd_id: str, body: dict[str, Any]) -> Prepared:
            req = v.parse(v.RegisterDataset, body)
            v.check_dataset(req, self.settings.max_context_length)
            return builders.register_dataset(self._seal, who.tenant_id, cmd_id, req, body)

        return await self._post(request, build, limit=self.settings.max_dataset_body_bytes)

    async def list_datasets(self, request: Request) -> Response:
        who = await self._who(request)
        return _page(
            request, self.svc.model.listing(who.tenant_id, "datasets"), views.dataset_json, "datasets"
        )

    async def get_dataset(self, request: Request) -> Response:
        who = await self._who(request)
        d = self.svc.model.dataset(who.tenant_id, request.path_params["dataset_id"])
        if d is None:
            raise not_found("dataset")
        return json_response(views.dataset_json(d))

    async def list_artifacts(self, request: Request) -> Response:
        who = await self._who(request)
        items = self.svc.model.listing(who.tenant_id, "artifacts")
        client_id = request.query_params.get("client_id")
        if client_id:
            items = [a for a in items if a.client_id == client_id]
        return _page(request, items, lambda a: views.artifact_json(a, self.svc.model), "artifacts")

    async def get_artifact(self, request: Request) -> Response:
        who = await self._who(request)
        a = self.svc.model.artifact(who.tenant_id, request.path_params["artifact_id"])
        if a is None:
            raise not_found("artifact")
        return json_response(views.artifact_json(a, self.svc.model))

    # -- table ---------------------------------------------------------------------------------------
    def table(self) -> list[tuple[str, str, Callable[[Request], Any]]]:
        """(method, path, handler) for every endpoint; ``openapi.py`` documents the same list."""
        p = PREFIX
        tc = p + "/training_clients/{client_id}"
        return [
            ("GET", "/healthz", self.healthz),
            ("GET", "/openapi.json", self.openapi),
            ("GET", p + "/healthz", self.healthz),
            ("GET", p + "/openapi.json", self.openapi),
            ("GET", p + "/models", self.models),
            ("POST", p + "/training_clients", self.create_client),
            ("GET", p + "/training_clients", self.list_clients),
            ("GET", tc, self.get_client),
            ("POST", tc + "/forward_backward", self.forward_backward),
            ("POST", tc + "/optim_step", self.optim_step),
            ("POST", tc + "/train_step", self.train_step),
            ("POST", tc + "/sample", self.sample),
            ("POST", tc + "/save_state", self.save_state),
            ("POST", tc + "/package", self.create_package),
            ("POST", tc + "/load_state", self.load_state),
            ("GET", tc + "/dp_metrics", self.dp_metrics),
            ("GET", tc + "/audit_logs", self.audit_logs),
            ("GET", p + "/futures", self.list_futures),
            ("GET", p + "/futures/{future_id}", self.get_future),
            ("DELETE", p + "/futures/{future_id}", self.cancel_future),
            ("POST", p + "/futures/{future_id}/cancel", self.cancel_future),
            ("POST", p + "/datasets", self.create_dataset),
            ("GET", p + "/datasets", self.list_datasets),
            ("GET", p + "/datasets/{dataset_id}", self.get_dataset),
            ("GET", p + "/artifacts", self.list_artifacts),
            ("GET", p + "/artifacts/{artifact_id}", self.get_artifact),
            ("GET", p + "/artifacts/{artifact_id}/content", self.artifact_content),
        ]

    def routes(self) -> list[BaseRoute]:
        """One Route per path dispatching on the method, so a wrong method is a 405
        whose ``Allow`` lists every method of the path."""
        by_path: dict[str, dict[str, Callable[[Request], Any]]] = {}
        for method, path, handler in self.table():
            by_path.setdefault(path, {})[method] = handler
        return [
            Route(path, _dispatch(handlers), methods=list(handlers)) for path, handlers in by_path.items()
        ]


def _dispatch(handlers: dict[str, Callable[[Request], Any]]) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return endpoint


__all__ = ["PREFIX", "ApiError", "RestApi"]
