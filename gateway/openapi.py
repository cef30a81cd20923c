"""The OpenAPI 3.1 document of the TenSafe REST API, served at ``/openapi.json``.

Request bodies: the JSON Schemas of the pydantic models in ``validation.py`` (the
same objects that validate requests, so the document cannot drift from the code).
Responses: hand-written schemas of the shapes in ``views.py``. Every operation
documents its error answers with the common ``Error`` schema.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

from tensafe.gateway import validation as v
from tensafe.gateway.settings import Settings

REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


NUM = {"type": "number"}
INT = {"type": "integer"}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
OBJ = {"type": "object"}
TIME = {"type": "string", "format": "date-time"}
N_NUM, N_INT, N_STR, N_BOOL = (_nullable(s) for s in (NUM, INT, STR, BOOL))


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    out["required"] = required if required is not None else list(props)
    return out


FUTURE_TYPES = ["create_training_client", "forward_backward", "optim_step", "train_step", "sample", "save_state", "create_package",
                "load_state", "register_dataset", "cancel"]  # fmt: skip

RESPONSE_SCHEMAS: dict[str, Any] = {
    "Error": _obj(
        {
            "error": _obj(
                {"code": STR, "message": STR, "details": OBJ, "request_id": STR},
                ["code", "message", "details"],
            )
        }
    ),
    "Health": _obj(
        {
            "status": {"type": "string", "enum": ["ok", "degraded"]},
            "version": STR,
            "reasons": {"type": "array", "items": STR},
        },
        ["status", "version"],
    ),
    "Models": _obj(
        {
            "models": {
                "type": "array",
                "items": _obj(
                    {
                        "model_ref": STR,
                        "max_context_length": INT,
                        "vocab_size": INT,
                        "trainable": BOOL,
                        "sampleable": BOOL,
                    }
                ),
            }
        }
    ),
    "FutureAccepted": _obj(
        {
            "future_id": STR,
            "type": {"type": "string", "enum": FUTURE_TYPES},
            "client_id": STR,
            "status": {"const": "pending"},
        }
    ),
    "TrainingClientAccepted": _obj(
        {
            "client_id": STR,
            "future_id": STR,
            "type": {"const": "create_training_client"},
            "status": {"const": "pending"},
        }
    ),
    "FutureError": _obj({"code": STR, "message": STR, "details": OBJ}, ["code", "message"]),
    "FutureState": _obj(
        {
            "future_id": STR,
            "type": STR,
            "client_id": STR,
            "status": {"type": "string", "enum": ["pending", "running", "completed", "failed", "cancelled"]},
            "created_at": N_STR,
            "updated_at": N_STR,
            "result": _nullable(OBJ),
            "error": {"anyOf": [_ref("FutureError"), {"type": "null"}]},
            "cancel_requested": BOOL,
        },
        ["future_id", "type", "client_id", "status", "result", "error"],
    ),
    "FutureList": _obj({"futures": {"type": "array", "items": _ref("FutureState")}}),
    "DP": _obj(
        {
            "enabled": BOOL,
            "noise_multiplier": N_NUM,
            "max_grad_norm": N_NUM,
            "target_epsilon": N_NUM,
            "target_delta": N_NUM,
            "accountant": N_STR,
            "sampling": N_STR,
            "sample_rate": N_NUM,
            "dataset_size": N_INT,
            "expected_batch_size": N_INT,
            "epsilon_spent": N_NUM,
            "guarantee": {
                "type": "string",
                "enum": ["exact", "conditional_on_client_sampling", "unamplified", "none"],
            },
        },
        ["enabled", "guarantee"],
    ),  # fmt: skip
    "TrainingClient": _obj(
        {
            "client_id": STR,
            "status": {"type": "string", "enum": ["creating", "ready", "failed"]},
            "model_ref": N_STR,
            "step": INT,
            "created_at": N_STR,
            "lora_config": _obj(
                {
                    "rank": N_INT,
                    "alpha": N_NUM,
                    "dropout": N_NUM,
                    "target_modules": {"type": "array", "items": STR},
                }
            ),
            "batch_size": N_INT,
            "dataset_id": N_STR,
            "metadata": OBJ,
            "dp": _ref("DP"),
            "last_event_seq": N_INT,
        },
        ["client_id", "status", "step", "dp"],
    ),
    "TrainingClientList": _obj(
        {"training_clients": {"type": "array", "items": _ref("TrainingClient")}, "next_cursor": N_STR}
    ),
    "DPMetrics": _obj(
        {
            "enabled": BOOL,
            "epsilon_spent": N_NUM,
            "epsilon_remaining": N_NUM,
            "target_epsilon": N_NUM,
            "delta": N_NUM,
            "steps": INT,
            "noise_multiplier": N_NUM,
            "max_grad_norm": N_NUM,
            "sample_rate": N_NUM,
            "accountant": N_STR,
            "sampling_mode": N_STR,
            "guarantee": STR,
        },
        ["enabled", "steps", "guarantee"],
    ),  # fmt: skip
    "AuditEntry": _obj(
        {
            "seq": INT,
            "partition": INT,
            "epoch": INT,
            "event_type": STR,
            "event_id": STR,
            "ts_ms": INT,
            "hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "prev_hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "command_id": N_STR,
        }
    ),  # fmt: skip
    "AuditLog": _obj(
        {"entries": {"type": "array", "items": _ref("AuditEntry")}, "next_after_seq": N_INT, "has_more": BOOL}
    ),
    "Dataset": _obj(
        {
            "dataset_id": STR,
            "name": STR,
            "num_records": INT,
            "content_hash": N_STR,
            "metadata": OBJ,
            "created_at": N_STR,
            "status": {"type": "string", "enum": ["pending", "ready", "failed"]},
        },
        ["dataset_id", "name", "num_records"],
    ),  # fmt: skip
    "DatasetList": _obj({"datasets": {"type": "array", "items": _ref("Dataset")}, "next_cursor": N_STR}),
    "DPCertificate": _obj(
        {
            "epsilon": N_NUM,
            "delta": N_NUM,
            "accountant": N_STR,
            "sampling_mode": N_STR,
            "guarantee": STR,
            "noise_multiplier": N_NUM,
            "max_grad_norm": N_NUM,
            "sample_rate": N_NUM,
            "steps": N_INT,
            "dataset_size": N_INT,
            "ledger_seq": N_INT,
            "checkpoint": _nullable(_obj({"tree_size": INT, "root_hash": STR})),
        },
        ["epsilon", "guarantee"],
    ),  # fmt: skip
    "Artifact": _obj(
        {
            "artifact_id": STR,
            "kind": {"type": "string", "enum": ["checkpoint", "dataset"]},
            "name": N_STR,
            "client_id": N_STR,
            "dataset_id": N_STR,
            "step": N_INT,
            "content_hash": N_STR,
            "encryption": _obj({"algorithm": STR, "key_id": N_STR}),
            "size": N_INT,
            "include_optimizer": N_BOOL,
            "metadata": OBJ,
            "created_at": N_STR,
            "dp_certificate": {"anyOf": [_ref("DPCertificate"), {"type": "null"}]},
        },
        ["artifact_id", "encryption"],
    ),  # fmt: skip
    "ArtifactList": _obj({"artifacts": {"type": "array", "items": _ref("Artifact")}, "next_cursor": N_STR}),
}

ERRORS = {
    "400": "invalid_request / schema_violation",
    "401": "unauthenticated",
    "403": "forbidden",
    "404": "not_found",
    "405": "method_not_allowed",
    "409": "conflict / idempotency_conflict / idempotency_in_progress",
    "413": "payload_too_large",
    "415": "unsupported_media_type",
    "422": "budget_exceeded",
    "429": "rate_limited",
    "500": "internal_error",
    "503": "unavailable",
    "504": "upstream_timeout",
}


def _path_param(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


IDEMPOTENCY_HEADER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,255}$"},
    "description": "same key + same body = same answer (API.md §5)",
}
PAGE = [
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 200}, "page size (default 50)"),
    _query("cursor", STR, "opaque cursor from the previous page"),
]


def _op(
    summary: str,
    ok: tuple[str, str],
    *,
    body: str | None = None,
    body_required: bool = True,
    params: list[dict[str, Any]] | None = None,
    auth: bool = True,
    errors: tuple[str, ...] = ("400", "401", "403", "404", "429", "500", "503"),
) -> dict[str, Any]:
    status, schema = ok
    responses: dict[str, Any] = {
        status: {"description": "success", "content": {"application/json": {"schema": _ref(schema)}}}
    }
    for code in errors:
        responses[code] = {
            "description": ERRORS[code],
            "content": {"application/json": {"schema": _ref("Error")}},
        }
    op: dict[str, Any] = {"summary": summary, "responses": responses, "parameters": list(params or [])}
    if body is not None:
        op["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": _ref(body)}},
        }
        op["parameters"].append(IDEMPOTENCY_HEADER)
    if not auth:
        op["security"] = []
    return op


POST_ERRORS = ("400", "401", "403", "404", "409", "413", "415", "422", "429", "500", "503", "504")


def _request_schemas() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, model in v.REQUEST_MODELS.items():
        schema = copy.deepcopy(model.model_json_schema(ref_template=REF + "{model}", mode="validation"))
        for dname, d in schema.pop("$defs", {}).items():
            out[dname] = d
        out[name] = schema
    return out


@lru_cache(maxsize=8)
def _document(version: str, models: tuple[str, ...]) -> dict[str, Any]:
    tc = [_path_param("client_id")]
    fut = [_path_param("future_id")]
    paths: dict[str, Any] = {
        "/healthz": {
            "get": _op("liveness and broker reachability", ("200", "Health"), auth=False, errors=("503",))
        },
        "/openapi.json": {"get": _op("this document", ("200", "Health"), auth=False, errors=())},
        "/api/v1/healthz": {
            "get": _op("liveness and broker reachability", ("200", "Health"), auth=False, errors=("503",))
        },
        "/api/v1/openapi.json": {"get": _op("this document", ("200", "Health"), auth=False, errors=())},
        "/api/v1/models": {
            "get": _op(
                "models that can be trained / sampled", ("200", "Models"), errors=("401", "403", "429")
            )
        },
        "/api/v1/training_clients": {
            "post": _op(
                "create a training client",
                ("202", "TrainingClientAccepted"),
                body="CreateTrainingClientRequest",
                errors=POST_ERRORS,
            ),
            "get": _op("list training clients (newest first)", ("200", "TrainingClientList"), params=PAGE),
        },
        "/api/v1/training_clients/{client_id}": {
            "get": _op("a training client", ("200", "TrainingClient"), params=tc)
        },
        "/api/v1/training_clients/{client_id}/forward_backward": {
            "post": _op(
                "per-sample clipped gradients, accumulated",
                ("202", "FutureAccepted"),
                body="ForwardBackwardRequest",
                params=tc,
                errors=POST_ERRORS,
            )
        },
        "/api/v1/training_clients/{client_id}/optim_step": {
            "post": _op(
                "noisy optimizer step",
                ("202", "FutureAccepted"),
                body="OptimStepRequest",
                body_required=False,
                params=tc,
                errors=POST_ERRORS,
            )
        },
        "/api/v1/training_clients/{client_id}/train_step": {
            "post": _op(
                "server-side Poisson batch + step",
                ("202", "FutureAccepted"),
                body="TrainStepRequest",
                body_required=False,
                params=tc,
                errors=POST_ERRORS,
            )
        },
        "/api/v1/training_clients/{client_id}/sample": {
            "post": _op(
                "generate completions",
                ("202", "FutureAccepted"),
                body="SampleRequest",
                params=tc,
                errors=POST_ERRORS,
            )
        },
        "/api/v1/training_clients/{client_id}/save_state": {
            "post": _op(
                "encrypted checkpoint",
                ("202", "FutureAccepted"),
                body="SaveStateRequest",
                body_required=False,
                params=tc,
                errors=POST_ERRORS,
            )
        },
        "/api/v1/training_clients/{client_id}/package": {
            "post": _op(
                "signed, encrypted TSSP package of the adapter",
                ("202", "FutureAccepted"),
                body="CreatePackageRequest",
                params=tc,
                errors=POST_ERRORS,
            )
        },
        "/api/v1/training_clients/{client_id}/load_state": {
            "post": _op(
                "load a checkpoint",
                ("202", "FutureAccepted"),
                body="LoadStateRequest",
                params=tc,
                errors=POST_ERRORS,
            )
        },
        "/api/v1/training_clients/{client_id}/dp_metrics": {
            "get": _op("privacy spent", ("200", "DPMetrics"), params=tc)
        },
        "/api/v1/training_clients/{client_id}/audit_logs": {
            "get": _op(
                "ledger events of the client",
                ("200", "AuditLog"),
                params=[
                    *tc,
                    _query("after_seq", {"type": "integer", "minimum": -1}, "entries with seq > after_seq"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "default 100"),
                ],
            )
        },
        "/api/v1/futures": {
            "get": _op(
                "batch state read",
                ("200", "FutureList"),
                params=[{**_query("ids", STR, "comma-separated future ids (<= 100)"), "required": True}],
            )
        },
        "/api/v1/futures/{future_id}": {
            "get": _op(
                "future state (long poll)",
                ("200", "FutureState"),
                params=[
                    *fut,
                    _query(
                        "wait",
                        {"type": "number", "minimum": 0},
                        "seconds to wait for a terminal state (<= 30)",
                    ),
                ],
            ),
            "delete": {
                **_op(
                    "cancel a pending future",
                    ("200", "FutureState"),
                    params=fut,
                    errors=("401", "403", "404", "409", "429", "500", "503"),
                ),
            },
        },
        "/api/v1/futures/{future_id}/cancel": {
            "post": _op(
                "cancel a pending future",
                ("200", "FutureState"),
                body="CancelRequest",
                body_required=False,
                params=fut,
                errors=POST_ERRORS,
            )
        },
        "/api/v1/datasets": {
            "post": _op(
                "register an encrypted dataset",
                ("201", "Dataset"),
                body="RegisterDatasetRequest",
                errors=POST_ERRORS,
            ),
            "get": _op("list datasets", ("200", "DatasetList"), params=PAGE),
        },
        "/api/v1/datasets/{dataset_id}": {
            "get": _op("a dataset", ("200", "Dataset"), params=[_path_param("dataset_id")])
        },
        "/api/v1/artifacts": {
            "get": _op(
                "list artifacts",
                ("200", "ArtifactList"),
                params=[*PAGE, _query("client_id", STR, "only this client's")],
            )
        },
        "/api/v1/artifacts/{artifact_id}": {
            "get": _op("an artifact", ("200", "Artifact"), params=[_path_param("artifact_id")])
        },
        "/api/v1/artifacts/{artifact_id}/content": {
            "get": {
                "summary": "the bytes of a package artifact (TSSP, encrypted to its recipients)",
                "operationId": "get_artifact_content",
                "parameters": [_path_param("artifact_id")],
                "responses": {
                    "200": {
                        "description": "the package",
                        "content": {
                            "application/vnd.tensafe.tssp+zip": {
                                "schema": {"type": "string", "format": "binary"}
                            }
                        },
                    },
                    "401": {"description": "unauthenticated"},
                    "404": {"description": "not found"},
                    "409": {"description": "not a package"},
                },
            }
        },
    }
    # cancels may answer 202 while the trainer has not decided yet
    for op in (
        paths["/api/v1/futures/{future_id}"]["delete"],
        paths["/api/v1/futures/{future_id}/cancel"]["post"],
    ):
        op["responses"]["202"] = {
            "description": "cancel queued, not yet decided",
            "content": {"application/json": {"schema": _ref("FutureState")}},
        }
    # /openapi.json answers this document, not Health
    for p in ("/openapi.json", "/api/v1/openapi.json"):
        paths[p]["get"]["responses"]["200"] = {
            "description": "OpenAPI 3.1 document",
            "content": {"application/json": {"schema": OBJ}},
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "TenSafe API",
            "version": version,
            "description": "Privacy-first fine-tuning. Models: " + ", ".join(models),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
            "schemas": {**_request_schemas(), **RESPONSE_SCHEMAS},
        },
    }


def openapi_document(settings: Settings) -> dict[str, Any]:
    return _document(settings.version, tuple(m.model_ref for m in settings.models))
