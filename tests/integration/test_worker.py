"""The trainer worker as a log consumer: exactly-once effect across kill -9.

Commands are published the way the gateway publishes them (sealed fields); the worker
runs as its own process (`python -m tensafe.trainer`) in test mode (seeded noise), so a
run killed with SIGKILL and restarted must end with the same adapter, bit for bit, as
an uninterrupted run — and every command must have exactly one outcome on the ledger.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from tensafe.crypto.sealed import seal
from tensafe.events import codec, kafka_io
from tensafe.events.audit import verify_snapshot
from tensafe.events.commands import SUCCESS_EVENT, Command, publish_command
from tensafe.events.export import collect
from tensafe.events.ledger import LedgerFollower
from tensafe.events.topics import ensure_topics, topic_names
from tensafe.node.runtime import open_keyring

pytestmark = pytest.mark.integration
TENANT = "tenant-a"
CLIENT = "tc_worker_test"
STEPS = 6


def _commands(keyring) -> list[Command]:
    ids = [[1, 5, 9, 13, 17, 21, 25, 29], [2, 6, 10, 14, 18, 22, 0, 0], [3, 7, 11, 15, 19, 23, 27, 31]]
    mask = [[1] * 8, [1] * 6 + [0] * 2, [1] * 8]
    batch = codec.encode(
        "tensafe.data.TokenBatch",
        {"input_ids": ids, "attention_mask": mask, "labels": ids, "target_tokens": [], "weights": []},
    )
    cmds = [
        Command(
            "c-create",
            "CreateTrainingClient",
            TENANT,
            CLIENT,
            {
                "model_ref": "tensafe-tiny-llama",
                "lora_rank": 4,
                "lora_alpha": 8.0,
                "target_modules": [],
                "dp_enabled": True,
                "noise_multiplier": 1.0,
                "max_grad_norm": 1.0,
                "target_epsilon": 50.0,
                "target_delta": 1e-5,
                "accountant": "rdp",
                "sampling_mode": "client_batches",
                "dataset_id": None,
                "dataset_size": 1000,
                "expected_batch_size": 3,
                "seed": 1234,
                "metadata_json": "{}",
            },
        )
    ]
    for s in range(STEPS):
        cmds.append(
            Command(
                f"c-fb-{s}",
                "ForwardBackward",
                TENANT,
                CLIENT,
                {
                    "loss_fn": "cross_entropy",
                    "return_logprobs": False,
                    "forward_only": False,
                    "batch_ciphertext": seal(keyring, TENANT, "ForwardBackward", batch),
                },
            )
        )
        cmds.append(
            Command(
                f"c-step-{s}",
                "OptimStep",
                TENANT,
                CLIENT,
                {"learning_rate": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
            )
        )
    cmds.append(
        Command(
            "c-save",
            "SaveState",
            TENANT,
            CLIENT,
            {"name": "final", "include_optimizer": True, "metadata_json": "{}"},
        )
    )
    return cmds


async def _outcomes(bootstrap: str, prefix: str) -> dict[str, list[str]]:
    names = topic_names(prefix)
    out: dict[str, list[str]] = {}
    from tensafe.events.commands import partition_for

    f = LedgerFollower(bootstrap, partition_for(CLIENT, 2), topic=names.ledger)
    async for e in f.read_to_end():
        env = e.envelope
        if env.command_id and env.short_type != "CommandAccepted":
            out.setdefault(env.command_id, []).append(env.short_type)
    return out


def _start_worker(bootstrap: str, prefix: str, data: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensafe.trainer",
            "--bootstrap",
            bootstrap,
            "--data-dir",
            str(data),
            "--topic-prefix",
            prefix,
            "--test-mode",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(data / "worker.log", "ab"),
    )


async def _wait_for(bootstrap: str, prefix: str, pred, timeout: float = 240) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = await _outcomes(bootstrap, prefix)
        if pred(got):
            return got
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out; outcomes so far: {got}")


async def _run(broker, tmp: Path, kill_after_steps: int | None) -> tuple[str, dict, str]:
    prefix = f"w{uuid.uuid4().hex[:8]}."
    await ensure_topics(broker.bootstrap, partitions=2, topic_prefix=prefix)
    tmp.mkdir(parents=True)
    keyring = open_keyring(tmp)
    keyring.create_tenant(TENANT)
    producer = kafka_io.make_producer(broker.bootstrap)
    await producer.start()
    try:
        for c in _commands(keyring):
            await publish_command(producer, topic_names(prefix).commands, 2, c)
    finally:
        await producer.stop()
    proc = _start_worker(broker.bootstrap, prefix, tmp)
    try:
        if kill_after_steps is not None:
            await _wait_for(
                broker.bootstrap,
                prefix,
                lambda o: sum("OptimStepApplied" in v for v in o.values()) >= kill_after_steps,
            )
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            proc = _start_worker(broker.bootstrap, prefix, tmp)
        got = await _wait_for(broker.bootstrap, prefix, lambda o: "c-save" in o)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    snap = await collect(broker.bootstrap, prefix)
    f = LedgerFollower(broker.bootstrap, 0, topic=topic_names(prefix).ledger)
    saved = None
    for p in range(2):
        f = LedgerFollower(broker.bootstrap, p, topic=topic_names(prefix).ledger)
        async for e in f.read_to_end():
            if e.envelope.short_type == "StateSaved":
                saved = e.envelope.payload_record()["content_sha256"]
    assert verify_snapshot(snap).ok
    return saved, got, prefix


async def test_killed_worker_resumes_to_the_same_adapter(broker, tmp_path):
    clean_sha, clean, _ = await _run(broker, tmp_path / "clean", None)
    killed_sha, killed, _ = await _run(broker, tmp_path / "killed", kill_after_steps=3)
    expected = {c.command_id: [SUCCESS_EVENT[c.command_type]] for c in _commands_stub()}
    assert clean == expected
    assert killed == expected  # every command exactly one outcome, none lost, none twice
    assert clean_sha is not None and killed_sha == clean_sha  # identical final state, bit for bit


def _commands_stub() -> list[Command]:
    class _K:  # sealing is irrelevant for the ids
        def data_key(self, tenant_id, purpose):
            return "dek_x", b"\x00" * 32

    return _commands(_K())


async def test_cancel_of_a_queued_command_and_of_a_finished_one(broker, tmp_path):
    prefix = f"c{uuid.uuid4().hex[:8]}."
    await ensure_topics(broker.bootstrap, partitions=2, topic_prefix=prefix)
    keyring = open_keyring(tmp_path)
    keyring.create_tenant(TENANT)
    create, fb, step = _commands(keyring)[:3]
    queued = Command("c-fb-queued", "ForwardBackward", TENANT, CLIENT, fb.payload)
    cancel_queued = Command(
        "c-cancel-1", "CancelCommand", TENANT, CLIENT, {"target_command_id": "c-fb-queued"}
    )
    cancel_done = Command("c-cancel-2", "CancelCommand", TENANT, CLIENT, {"target_command_id": fb.command_id})
    foreign = Command(
        "c-cancel-3", "CancelCommand", "intruder", CLIENT, {"target_command_id": step.command_id}
    )
    producer = kafka_io.make_producer(broker.bootstrap)
    await producer.start()
    names = topic_names(prefix)
    try:
        for c in (create, fb, queued, cancel_queued, foreign, step):
            await publish_command(producer, names.commands, 2, c)
    finally:
        await producer.stop()
    proc = _start_worker(broker.bootstrap, prefix, tmp_path)
    try:
        await _wait_for(broker.bootstrap, prefix, lambda o: step.command_id in o)
        producer = kafka_io.make_producer(broker.bootstrap)
        await producer.start()
        await publish_command(producer, names.commands, 2, cancel_done)  # too late: fb already ran
        await producer.stop()
        got = await _wait_for(broker.bootstrap, prefix, lambda o: "c-cancel-2" in o)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert got["c-fb-queued"] == ["CommandCancelled"]  # never ran
    assert "c-cancel-1" not in got  # resolved by the same CommandCancelled event
    assert got[fb.command_id] == ["ForwardBackwardCompleted"]
    assert got["c-cancel-2"] == ["CommandFailed"]  # not cancellable any more
    assert got[step.command_id] == ["OptimStepApplied"]  # another tenant cannot cancel it
    assert got["c-cancel-3"] == ["CommandFailed"]
