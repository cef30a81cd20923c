"""The SDK against a fake gateway served by uvicorn on loopback (transport, futures, ordering, errors)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest
import tensafe
from sdk_fake_gateway import API_KEY, OTHER_KEY, FakeGateway, ServerThread
from tensafe import (
    AdamParams,
    Batch,
    Datum,
    DPConfig,
    ServiceClient,
    TrainingClient,
    TrainingConfig,
)

BATCH = {
    "input_ids": [[1, 2, 3, 4], [5, 6, 7]],
    "attention_mask": [[1, 1, 1, 1], [1, 1, 1]],
    "labels": [[-100, 2, 3, 4], [-100, 6, 7]],
}


def make_tc(service: ServiceClient, **dp: Any) -> TrainingClient:
    return service.create_training_client(
        TrainingConfig(model_ref="meta-llama/Llama-3-8B", dp_config=DPConfig(**dp))
    )


class FakeTensor:
    """Quacks like a torch tensor / numpy array: only `.tolist()`."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def tolist(self) -> Any:
        return self.data


# ------------------------------------------------------------------ retries and idempotency over the wire


def test_retried_post_reuses_idempotency_key(service: ServiceClient, gateway: FakeGateway) -> None:
    tc = make_tc(service)
    tc.forward_backward(BATCH).result()
    gateway.fault("/optim_step", 503, times=2)
    res = tc.optim_step().result()
    assert res.step == 1
    posts = gateway.requests_to("/optim_step")
    assert len(posts) == 3
    assert len({p["idempotency_key"] for p in posts}) == 1 and posts[0]["idempotency_key"]
    fb_key = gateway.requests_to("/forward_backward")[0]["idempotency_key"]
    assert fb_key != posts[0]["idempotency_key"]  # one key per logical call


def test_lost_response_is_deduplicated_by_idempotency_key(
    service: ServiceClient, gateway: FakeGateway
) -> None:
    tc = make_tc(service)
    gateway.fault("/forward_backward", 502, after=True)  # processed, answer lost
    fut = tc.forward_backward(BATCH)
    assert fut.result().num_samples == 2
    assert [t for _, t, _ in gateway.executed].count("forward_backward") == 1
    assert fut.future_id == gateway.executed[-1][2]


def test_429_waits_retry_after_for_real(service: ServiceClient, gateway: FakeGateway) -> None:
    gateway.fault("/api/v1/models", 429, retry_after="1")
    t0 = time.monotonic()
    assert service.list_models()[0].max_context_length == 8192
    assert time.monotonic() - t0 >= 1.0
    reqs = [r for r in gateway.requests if r["path"] == "/api/v1/models"]
    assert len(reqs) == 2 and reqs[1]["t"] - reqs[0]["t"] >= 1.0


def test_connection_refused_is_retried_until_the_server_listens(gateway: FakeGateway) -> None:
    srv = ServerThread(gateway)  # bound, not yet listening: connections are refused
    threading.Timer(0.4, srv.start).start()
    try:
        with ServiceClient(srv.url, API_KEY, backoff_base=0.2, backoff_max=0.5, max_retries=8) as svc:
            assert svc.health()["status"] == "ok"
    finally:
        time.sleep(0.1)
        srv.stop()


def test_idempotency_conflict_over_the_wire(service: ServiceClient) -> None:
    service._http.request(
        "POST", "/datasets", json={"name": "a", "records": [{"text": "x"}]}, idempotency_key="k1"
    )
    again = service._http.request(
        "POST", "/datasets", json={"name": "a", "records": [{"text": "x"}]}, idempotency_key="k1"
    )
    assert again["name"] == "a"
    with pytest.raises(tensafe.IdempotencyConflictError) as ei:
        service._http.request(
            "POST", "/datasets", json={"name": "b", "records": [{"text": "x"}]}, idempotency_key="k1"
        )
    assert ei.value.code == "idempotency_conflict" and ei.value.status == 409


# ------------------------------------------------------------------ errors


def test_bad_key_is_authentication_error(server: ServerThread) -> None:
    with ServiceClient(server.url, "tml-nope") as svc, pytest.raises(tensafe.AuthenticationError) as ei:
        svc.list_training_clients()
    assert ei.value.code == "unauthenticated" and ei.value.status == 401 and ei.value.request_id


def test_other_tenants_resources_are_not_found(service: ServiceClient, server: ServerThread) -> None:
    tc = make_tc(service)
    art = tc.save_state("mine")
    with ServiceClient(server.url, OTHER_KEY) as other:
        with pytest.raises(tensafe.NotFoundError) as ei:
            other.get_training_client(tc.client_id)
        assert ei.value.code == "not_found"
        with pytest.raises(tensafe.NotFoundError):
            other.get_artifact(art.artifact_id)
        with pytest.raises(tensafe.NotFoundError):
            other.get_future(gateway_future(service, tc)).status()
        assert other.list_training_clients() == []


def gateway_future(service: ServiceClient, tc: TrainingClient) -> str:
    return tc.forward_backward(BATCH).future_id


def test_conflict_and_sync_budget_errors(service: ServiceClient) -> None:
    tc = make_tc(service, target_epsilon=0.5)
    with pytest.raises(tensafe.ConflictError) as ei:
        tc.train_step()
    assert ei.value.code == "conflict" and ei.value.details["reason"] == "sampling_mode"
    tc.forward_backward(BATCH).result()
    assert tc.optim_step().result().epsilon_spent == 0.5
    with pytest.raises(tensafe.BudgetExceededError) as be:
        tc.optim_step()  # the gateway already knows: 422
    assert be.value.status == 422 and be.value.code == "budget_exceeded"
    assert not isinstance(be.value, tensafe.FutureFailedError)


def test_client_side_validation(service: ServiceClient) -> None:
    tc = make_tc(service)
    with pytest.raises(tensafe.ValidationError):
        tc.forward_backward({"input_ids": [[1, 2]], "labels": [[1]]})  # shape mismatch
    with pytest.raises(tensafe.ValidationError):
        tc.forward_backward({"input_ids": [[1]] * 257})
    with pytest.raises(tensafe.ValidationError):
        tc.forward_backward({"input_ids": [[1, 2]], "token_type_ids": [[0, 0]]})
    with pytest.raises(tensafe.ValidationError):
        tc.sample()
    with pytest.raises(tensafe.ValidationError):
        service.create_training_client({"model_ref": "m", "dp_config": {"target_epsilom": 1.0}})
    with pytest.raises(tensafe.ValidationError):
        tc.optim_step({"learning_rat": 1e-3})


# ------------------------------------------------------------------ futures


def test_future_long_polls_until_completed(service: ServiceClient, gateway: FakeGateway) -> None:
    tc = make_tc(service)
    gateway.exec_delay = 0.4
    fut = tc.forward_backward(BATCH)
    t0 = time.monotonic()
    res = fut.result()
    assert time.monotonic() - t0 >= 0.3
    assert isinstance(res, tensafe.ForwardBackwardResult) and res.num_samples == 2 and res.clip is not None
    polls = [r for r in gateway.requests if r["path"] == f"/api/v1/futures/{fut.future_id}"]
    assert len(polls) <= 2  # long poll, not a busy loop
    assert float(polls[0]["query"]["wait"]) == 30
    assert fut.done() and fut.status() == "completed"
    assert len([r for r in gateway.requests if r["path"] == f"/api/v1/futures/{fut.future_id}"]) == len(polls)


def test_future_timeout_then_completion(service: ServiceClient, gateway: FakeGateway) -> None:
    tc = make_tc(service)
    gateway.paused = True
    fut = tc.forward_backward(BATCH)
    assert fut.status() == "pending" and not fut.done()
    with pytest.raises(tensafe.FutureTimeoutError) as ei:
        fut.result(timeout=0.3)
    assert isinstance(ei.value, TimeoutError) and ei.value.future_id == fut.future_id
    gateway.paused = False
    assert fut.result(timeout=5).loss > 0


def test_cancel_pending_future(service: ServiceClient, gateway: FakeGateway) -> None:
    tc = make_tc(service)
    gateway.paused = True
    first, second = tc.forward_backward(BATCH), tc.forward_backward(BATCH)
    assert second.cancel() is True
    assert second.status() == "cancelled"
    with pytest.raises(tensafe.FutureCancelledError) as ei:
        second.result()
    assert ei.value.code == "cancelled"
    gateway.paused = False
    assert first.result().num_samples == 2
    assert first.cancel() is False  # completed: nothing to cancel
    assert [t for _, t, _ in gateway.executed].count("forward_backward") == 1


def test_failed_futures_raise_typed_errors(service: ServiceClient, gateway: FakeGateway) -> None:
    tc = make_tc(service, target_epsilon=1.0)
    with pytest.raises(tensafe.FutureFailedError) as ei:
        tc.load_state("art_unknown")
    assert ei.value.code == "not_found" and ei.value.details["resource"] == "artifact"
    assert not isinstance(ei.value, tensafe.BudgetExceededError)
    gateway.paused = True
    for _ in range(2):
        tc.forward_backward(BATCH)
        tc.optim_step()
    tc.forward_backward(BATCH)
    fut = tc.optim_step()  # queued behind the others: the gateway cannot know yet, the trainer refuses
    gateway.paused = False
    with pytest.raises(tensafe.BudgetExceededError) as be:
        fut.result()
    assert isinstance(be.value, tensafe.FutureBudgetExceededError) and be.value.future_id == fut.future_id
    assert be.value.details["target_epsilon"] == 1.0
    assert fut.exception() is be.value


def test_get_future_is_typed_by_the_server_type(service: ServiceClient) -> None:
    tc = make_tc(service)
    fid = tc.forward_backward(BATCH, return_logprobs=True).future_id
    res = service.get_future(fid).result()
    assert (
        isinstance(res, tensafe.ForwardBackwardResult) and res.logprobs == [[-1.0] * 4] * 2
    )  # the ragged BATCH went out right-padded


# ------------------------------------------------------------------ ordering and unobserved futures


def test_unobserved_steps_run_in_order_and_dp_metrics_waits(
    service: ServiceClient, gateway: FakeGateway
) -> None:
    tc = make_tc(service)
    gateway.exec_delay = 0.02
    for _ in range(5):
        tc.forward_backward(BATCH)
        tc.optim_step()  # never waited on
    m = tc.get_dp_metrics()
    assert m.steps == 5 and m.epsilon_spent == 2.5
    kinds = [t for cid, t, _ in gateway.executed if cid == tc.client_id]
    assert kinds == ["create_training_client"] + ["forward_backward", "optim_step"] * 5
    assert tc.pending_futures() == []


def test_unobserved_failures_are_reported(
    service: ServiceClient, gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    tc = make_tc(service, target_epsilon=1.0)
    gateway.paused = True  # so the gateway cannot refuse synchronously: the trainer does
    for _ in range(3):
        tc.forward_backward(BATCH)
        tc.optim_step()
    gateway.paused = False
    with caplog.at_level(logging.WARNING, logger="tensafe"):
        m = tc.get_dp_metrics()
    assert m.steps == 2
    assert [e.code for e in tc.unobserved_errors] == ["budget_exceeded"]
    assert "budget_exceeded" in caplog.text
    assert tc.wait_pending() == []  # reported once


def test_many_unobserved_futures_are_pruned(
    service: ServiceClient, gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tensafe.training_client as tcmod

    monkeypatch.setattr(tcmod, "_PENDING_REFRESH_AT", 5)
    tc = make_tc(service)
    for _ in range(12):
        tc.forward_backward(BATCH)
    time.sleep(0.2)
    tc.forward_backward(BATCH)
    assert len(tc.pending_futures()) <= 6
    assert tc.wait_pending() == []
    batch_reads = [r for r in gateway.requests if r["path"] == "/api/v1/futures"]
    assert batch_reads and all(len(r["query"]["ids"].split(",")) <= 100 for r in batch_reads)


# ------------------------------------------------------------------ inputs


def test_tensor_like_inputs_without_importing_torch(service: ServiceClient, gateway: FakeGateway) -> None:
    tc = make_tc(service)
    tc.forward_backward(
        {
            "input_ids": FakeTensor([[1, 2, 3]]),
            "attention_mask": FakeTensor([[True, True, False]]),
            "labels": [FakeTensor([1, 2, 3])],
        }
    ).result()
    tc.forward_backward({"input_ids": FakeTensor([7, 8, 9])}).result()  # a single 1-D row
    tc.forward_backward(Batch(input_ids=[[4, 5]])).result()
    tc.forward_backward(
        [
            Datum(tokens=[1, 2], target_tokens=[2, 3], weights=[0.0, 1.0]),
            {"tokens": [4], "target_tokens": [5]},
        ]
    ).result()
    bodies = [
        b for _, t, fid in gateway.executed if t == "forward_backward" for b in [gateway.futures[fid].body]
    ]
    assert bodies[0]["batch"] == {
        "input_ids": [[1, 2, 3]],
        "attention_mask": [[1, 1, 0]],
        "labels": [[1, 2, 3]],
    }
    assert bodies[1]["batch"] == {"input_ids": [[7, 8, 9]]}
    assert bodies[3]["data"][0] == {"tokens": [1, 2], "target_tokens": [2, 3], "weights": [0.0, 1.0]}


def test_ragged_rows_are_right_padded(service: ServiceClient, gateway: FakeGateway) -> None:
    tc = make_tc(service)
    tc.forward_backward({"input_ids": [[1, 2, 3], [4]], "labels": [[-100, 2, 3], [4]]}).result()
    tc.forward_backward({"input_ids": [[1, 2], [3]], "attention_mask": [[1, 1], [1]]}).result()
    fb = [gateway.futures[fid].body["batch"] for _, t, fid in gateway.executed if t == "forward_backward"]
    assert fb[0] == {
        "input_ids": [[1, 2, 3], [4, 0, 0]],
        "attention_mask": [[1, 1, 1], [1, 0, 0]],
        "labels": [[-100, 2, 3], [4, -100, -100]],
    }
    assert fb[1] == {"input_ids": [[1, 2], [3, 0]], "attention_mask": [[1, 1], [1, 0]]}


def test_numpy_arrays_are_accepted(service: ServiceClient, gateway: FakeGateway) -> None:
    np = pytest.importorskip("numpy")
    tc = make_tc(service)
    tc.forward_backward(
        {
            "input_ids": np.array([[1, 2], [3, 4]], dtype=np.int64),
            "attention_mask": np.ones((2, 2), dtype=bool),
        }
    ).result()
    body = gateway.futures[gateway.executed[-1][2]].body
    assert body["batch"] == {"input_ids": [[1, 2], [3, 4]], "attention_mask": [[1, 1], [1, 1]]}


def test_tinker_like_datum_objects(service: ServiceClient, gateway: FakeGateway) -> None:
    class ModelInput:
        def to_ints(self) -> list[int]:
            return [1, 2, 3]

    class TensorData:
        def __init__(self, data: list[Any]) -> None:
            self.data = data

    class TinkerDatum:
        model_input = ModelInput()
        loss_fn_inputs = {"target_tokens": TensorData([2, 3, 4]), "weights": FakeTensor([1.0, 1.0, 0.5])}

    tc = make_tc(service)
    tc.forward_backward([TinkerDatum()]).result()
    body = gateway.futures[gateway.executed[-1][2]].body
    assert body["data"] == [{"tokens": [1, 2, 3], "target_tokens": [2, 3, 4], "weights": [1.0, 1.0, 0.5]}]


# ------------------------------------------------------------------ the rest of the surface


def test_sample_save_load_audit_and_lists(service: ServiceClient, gateway: FakeGateway) -> None:
    tc = make_tc(service)
    res = tc.sample(prompt_tokens=FakeTensor([[1, 2], [3]]), max_tokens=3, num_samples=2, stop="\n", seed=1)
    assert len(res.samples) == 4 and res.samples[2].prompt_index == 1
    body = gateway.futures[gateway.executed[-1][2]].body
    assert body == {
        "prompt_tokens": [[1, 2], [3]],
        "max_tokens": 3,
        "stop": ["\n"],
        "seed": 1,
        "num_samples": 2,
    }
    tc.forward_backward(BATCH)
    tc.optim_step(AdamParams(learning_rate=3e-4))
    saved = tc.save_state("ckpt-1", metadata={"epoch": 1})
    assert saved.name == "ckpt-1" and saved.step == 1 and saved.encryption.algorithm == "AES-256-GCM"
    assert (
        saved.content_hash and saved.content_hash.startswith("sha256:") and saved.dp_certificate is not None
    )
    loaded = tc.load_state(saved.artifact_id)
    assert loaded.step == 1 and loaded.loaded_optimizer is True
    assert [a.artifact_id for a in service.list_artifacts(client_id=tc.client_id)] == [saved.artifact_id]
    assert service.get_artifact(saved.artifact_id).metadata == {"epoch": 1}

    page = tc.get_audit_logs(limit=3)
    assert len(page.entries) == 3 and page.has_more and page.next_after_seq == page.entries[-1].seq
    rest = tc.get_audit_logs(after_seq=page.next_after_seq)
    entries = page.entries + rest.entries
    assert [e.seq for e in entries] == sorted(e.seq for e in entries)
    for a, b in zip(entries, entries[1:], strict=False):
        if b.seq == a.seq + 1:
            assert b.prev_hash == a.hash
    assert {e.command_id for e in entries} >= {saved_fid for saved_fid in [gateway.executed[-1][2]]}

    st = tc.status()
    assert st.status == "ready" and st.step == 1 and st.last_event_seq == entries[-1].seq
    make_tc(service)
    make_tc(service)
    ids = [c.client_id for c in service.list_training_clients()]  # three clients, two per page
    assert len(ids) == 3 and tc.client_id in ids
    attached = service.get_training_client(tc.client_id)
    assert attached.model_ref == "meta-llama/Llama-3-8B"


def test_datasets_and_train_step(service: ServiceClient, gateway: FakeGateway) -> None:
    ds = service.register_dataset("tickets", ["first text", "second text"], metadata={"src": "x"})
    assert ds.num_records == 2 and ds.dataset_id.startswith("ds_")
    assert service.get_dataset(ds.dataset_id).content_hash == ds.content_hash
    assert [d.dataset_id for d in service.list_datasets()] == [ds.dataset_id]
    tok = service.register_dataset("tok", [FakeTensor([1, 2, 3]), {"input_ids": [4, 5], "labels": [-100, 5]}])
    assert tok.num_records == 2
    assert gateway.requests_to("/datasets")[-1]["idempotency_key"]
    with pytest.raises(tensafe.ValidationError):
        service.register_dataset("mixed", ["text", [1, 2]])
    gateway.tamper_dataset_hash = True
    with pytest.raises(tensafe.IntegrityError):
        service.register_dataset("t2", ["x"])

    tc = service.create_training_client(
        TrainingConfig(model_ref="m", dataset_id=ds.dataset_id, dp_config=DPConfig(sampling="poisson"))
    )
    res = tc.train_step().result()
    assert isinstance(res, tensafe.TrainStepResult) and res.step == 1


def test_env_configuration_against_live_server(server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENSAFE_BASE_URL", server.url)
    monkeypatch.setenv("TENSAFE_API_KEY", API_KEY)
    with ServiceClient() as svc:
        tc = make_tc(svc)
        assert tc.forward_backward(BATCH).result().num_samples == 2


# ------------------------------------------------------------------ async forms


async def test_async_surface(aservice: ServiceClient, gateway: FakeGateway) -> None:
    tc = await aservice.create_training_client_async(TrainingConfig(model_ref="meta-llama/Llama-3-8B"))
    fut = await tc.forward_backward_async(BATCH)
    res = await fut
    assert res.num_samples == 2
    step = await (await tc.optim_step_async({"learning_rate": 1e-3})).result_async()
    assert step.step == 1 and step.learning_rate == 1e-3
    sample = await tc.sample_async(prompts=["hi"], max_tokens=4)
    assert sample.samples[0].completion == "answer 0 to hi"
    saved = await tc.save_state_async("a1")
    assert (await tc.load_state_async(saved.artifact_id)).artifact_id == saved.artifact_id
    m = await tc.get_dp_metrics_async()
    assert m.steps == 1 and m.delta == 1e-5
    assert (await tc.get_audit_logs_async()).entries
    assert (await tc.status_async()).status == "ready"
    assert [c.client_id for c in await aservice.list_training_clients_async()] == [tc.client_id]
    ds = await aservice.register_dataset_async("d", ["x"])
    assert (await aservice.get_dataset_async(ds.dataset_id)).name == "d"
    assert (await aservice.list_models_async())[0].model_ref == "meta-llama/Llama-3-8B"
    assert (await aservice.health_async())["status"] == "ok"
    assert (await aservice.get_artifact_async(saved.artifact_id)).name == "a1"


async def test_async_ordering_cancel_and_retries(aservice: ServiceClient, gateway: FakeGateway) -> None:
    tc = await aservice.create_training_client_async({"model_ref": "m"})
    gateway.fault("/forward_backward", 503, times=1)
    futs = await asyncio.gather(
        tc.forward_backward_async(BATCH),
        tc.optim_step_async(),
        tc.forward_backward_async(BATCH),
        tc.optim_step_async(),
    )
    results = await asyncio.gather(*futs)
    assert [type(r).__name__ for r in results] == ["ForwardBackwardResult", "OptimStepResult"] * 2
    kinds = [t for _, t, _ in gateway.executed][1:]
    assert kinds == ["forward_backward", "optim_step"] * 2
    assert len({p["idempotency_key"] for p in gateway.requests_to("/forward_backward")}) == 2

    gateway.paused = True
    a, b = await tc.forward_backward_async(BATCH), await tc.forward_backward_async(BATCH)
    assert await b.cancel_async() is True and await b.status_async() == "cancelled"
    with pytest.raises(tensafe.FutureTimeoutError):
        await a.result_async(timeout=0.2)
    gateway.paused = False
    assert (await a.result_async(timeout=5)).num_samples == 2
    with pytest.raises(tensafe.FutureCancelledError):
        await b
    assert await a.done_async() and await a.cancel_async() is False
