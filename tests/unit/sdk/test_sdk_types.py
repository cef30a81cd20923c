"""Wire types and the error mapping."""

from __future__ import annotations

import pytest
import tensafe
from hypothesis import given
from hypothesis import strategies as st
from tensafe import errors
from tensafe.types import (
    RESULT_TYPES,
    AuditLogPage,
    DPConfig,
    DPMetrics,
    LoRAConfig,
    SampleResult,
    SaveStateResult,
    TrainingClientStatus,
    TrainingConfig,
)


def test_public_names_are_exported() -> None:
    for name in (
        "ServiceClient",
        "TrainingClient",
        "TrainingConfig",
        "LoRAConfig",
        "DPConfig",
        "AdamParams",
        "FutureHandle",
        "TenSafeError",
        "AuthenticationError",
        "NotFoundError",
        "BudgetExceededError",
        "ValidationError",
        "ConflictError",
        "RateLimitError",
        "ServerError",
        "FutureFailedError",
        "FutureCancelledError",
        "FutureTimeoutError",
        "SamplingParams",
        "DPMetrics",
        "SampleResult",
    ):
        assert hasattr(tensafe, name), name
        assert name in tensafe.__all__


def test_training_config_to_dict_omits_unset_and_round_trips() -> None:
    cfg = TrainingConfig(
        model_ref="m",
        lora_config=LoRAConfig(rank=16, alpha=32),
        dp_config=DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, target_epsilon=8.0),
        batch_size=8,
    )
    d = cfg.to_dict()
    assert d == {
        "model_ref": "m",
        "lora_config": {"rank": 16, "alpha": 32},
        "dp_config": {
            "enabled": True,
            "noise_multiplier": 1.0,
            "max_grad_norm": 1.0,
            "target_epsilon": 8.0,
            "target_delta": 1e-5,
            "accountant": "rdp",
        },
        "batch_size": 8,
    }
    assert TrainingConfig.from_dict(d) == cfg


@pytest.mark.parametrize(
    "kwargs",
    [
        {"accountant": "gdp"},
        {"sampling": "shuffle"},
        {"noise_multiplier": 0.0},
        {"target_delta": 1.0},
        {"max_grad_norm": -1.0},
        {"target_epsilon": 0},
        {"dataset_size": 0},
    ],
)
def test_dp_config_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(tensafe.ValidationError) as ei:
        DPConfig(**kwargs)
    assert ei.value.code == "schema_violation"
    assert isinstance(ei.value, ValueError)


def test_dp_disabled_allows_zero_noise() -> None:
    assert DPConfig(enabled=False, noise_multiplier=0.0).to_dict()["enabled"] is False


def test_from_dict_ignores_unknown_and_builds_nested() -> None:
    r = SaveStateResult.from_dict(
        {
            "artifact_id": "art_1",
            "content_hash": "sha256:ab",
            "size": 3,
            "future_field": 1,
            "encryption": {"algorithm": "AES-256-GCM", "key_id": "k1", "extra": True},
            "dp_certificate": {
                "epsilon": 1.5,
                "delta": 1e-5,
                "checkpoint": {"tree_size": 4, "root_hash": "ff"},
            },
        }
    )
    assert r.encryption.algorithm == "AES-256-GCM" and r.encryption.key_id == "k1"
    assert r.encrypted is True
    assert r.dp_certificate is not None and r.dp_certificate.checkpoint is not None
    assert r.dp_certificate.checkpoint.tree_size == 4
    s = SampleResult.from_dict({"samples": [{"completion": "hi", "tokens": [1], "finish_reason": "stop"}]})
    assert s.samples[0].completion == "hi"
    page = AuditLogPage.from_dict(
        {
            "entries": [
                {
                    "seq": 1,
                    "partition": 0,
                    "event_type": "e",
                    "event_id": "i",
                    "ts_ms": 5,
                    "hash": "a",
                    "prev_hash": "b",
                }
            ],
            "next_after_seq": 1,
        }
    )
    assert page.entries[0].seq == 1 and page.entries[0].command_id is None
    st_ = TrainingClientStatus.from_dict(
        {"client_id": "tc_1", "status": "ready", "dp": {"epsilon_spent": 0.5}}
    )
    assert st_.dp is not None and st_.dp.epsilon_spent == 0.5


def test_result_types_cover_every_future_type() -> None:
    assert set(RESULT_TYPES) == {
        "create_training_client",
        "forward_backward",
        "optim_step",
        "train_step",
        "sample",
        "save_state",
        "load_state",
        "create_package",
    }


@given(
    eps=st.floats(min_value=0, max_value=100, allow_nan=False),
    target=st.floats(min_value=0.01, max_value=100, allow_nan=False),
    steps=st.integers(min_value=0, max_value=10**9),
    delta=st.floats(min_value=1e-12, max_value=0.5),
)
def test_dp_metrics_round_trip(eps: float, target: float, steps: int, delta: float) -> None:
    m = DPMetrics(
        epsilon_spent=eps,
        epsilon_remaining=max(0.0, target - eps),
        target_epsilon=target,
        delta=delta,
        steps=steps,
        accountant="rdp",
        sampling_mode="poisson",
        guarantee="exact",
    )
    assert DPMetrics.from_dict(m.to_dict()) == m


@pytest.mark.parametrize(
    "status,code,cls",
    [
        (400, "invalid_request", errors.ValidationError),
        (400, "schema_violation", errors.ValidationError),
        (401, "unauthenticated", errors.AuthenticationError),
        (403, "forbidden", errors.PermissionDeniedError),
        (404, "not_found", errors.NotFoundError),
        (405, "method_not_allowed", errors.ValidationError),
        (409, "conflict", errors.ConflictError),
        (409, "idempotency_conflict", errors.IdempotencyConflictError),
        (409, "idempotency_in_progress", errors.ConflictError),
        (413, "payload_too_large", errors.PayloadTooLargeError),
        (415, "unsupported_media_type", errors.ValidationError),
        (422, "budget_exceeded", errors.BudgetExceededError),
        (429, "rate_limited", errors.RateLimitError),
        (500, "internal_error", errors.ServerError),
        (502, "bad_gateway", errors.ServerError),
        (503, "unavailable", errors.ServerError),
        (504, "upstream_timeout", errors.ServerError),
    ],
)
def test_error_mapping_by_code(status: int, code: str, cls: type) -> None:
    body = {"error": {"code": code, "message": "m", "details": {"x": 1}, "request_id": "req_1"}}
    e = errors.error_from_response(status, body)
    assert type(e) is cls
    assert (e.code, e.status, e.details, e.request_id) == (code, status, {"x": 1}, "req_1")
    assert isinstance(e, errors.TenSafeError)


def test_error_mapping_without_json_body_falls_back_on_status() -> None:
    assert type(errors.error_from_response(502, None)) is errors.ServerError
    e = errors.error_from_response(404, "<html>")
    assert type(e) is errors.NotFoundError and e.code == "not_found"
    assert type(errors.error_from_response(418, None)) is errors.TenSafeError


def test_future_errors() -> None:
    e = errors.future_error(
        "fut_1", "failed", {"code": "budget_exceeded", "message": "no", "details": {"a": 1}}
    )
    assert isinstance(e, errors.FutureFailedError) and isinstance(e, errors.BudgetExceededError)
    assert e.code == "budget_exceeded" and e.future_id == "fut_1" and e.details == {"a": 1}
    c = errors.future_error("fut_2", "cancelled", None)
    assert isinstance(c, errors.FutureCancelledError) and c.code == "cancelled"
    assert not isinstance(c, errors.FutureFailedError)
    t = errors.FutureTimeoutError("late", future_id="fut_3")
    assert isinstance(t, TimeoutError) and isinstance(t, errors.TenSafeError) and t.code == "timeout"
