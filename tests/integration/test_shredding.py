"""Crypto-shredding: after a tenant's KEK is destroyed nothing of it decrypts,
another tenant is untouched, and the ledger (which holds only ciphertext) still verifies."""

from __future__ import annotations

import uuid

import pytest
from tensafe.crypto.errors import CryptoError
from tensafe.crypto.sealed import open_sealed, seal
from tensafe.events.audit import verify_snapshot
from tensafe.events.export import collect
from tensafe.events.ledger import LedgerFollower, LedgerWriter
from tensafe.events.topics import ensure_topics, topic_names
from tensafe.node.runtime import open_keyring, open_store

pytestmark = pytest.mark.integration


async def test_shredded_tenant_is_unreadable_and_ledger_still_verifies(broker, tmp_path):
    prefix = f"s{uuid.uuid4().hex[:8]}."
    await ensure_topics(broker.bootstrap, partitions=1, topic_prefix=prefix)
    names = topic_names(prefix)
    keyring = open_keyring(tmp_path)
    store = open_store(tmp_path, keyring)
    for t in ("acme", "globex"):
        keyring.create_tenant(t)
    w = LedgerWriter(broker.bootstrap, 0, topic=names.ledger, checkpoint_topic=names.checkpoints)
    await w.start()
    secrets_by_tenant = {t: f"patient notes of {t}".encode() for t in ("acme", "globex")}
    refs = {}
    for t, secret in secrets_by_tenant.items():
        sealed_prompt = seal(keyring, t, "SampleCompleted", secret)
        await w.append(
            "SampleCompleted",
            {
                "num_prompts": 1,
                "num_samples": 1,
                "prompt_tokens": 3,
                "completion_tokens": 3,
                "temperature": 1.0,
                "max_tokens": 3,
                "duration_ms": 1.0,
                "prompts_ciphertext": sealed_prompt,
                "completions_ciphertext": sealed_prompt,
            },
            tenant_id=t,
            client_id=f"tc_{t}",
            command_id=f"cmd-{t}",
        )
        refs[t] = store.put(t, "checkpoint", secret * 100)
    await w.stop()
    assert all(
        secret not in raw
        for recs in (await collect(broker.bootstrap, prefix)).ledger.values()
        for _, raw in recs
        for secret in secrets_by_tenant.values()
    )  # never clear text on the log

    keyring.shred_tenant("acme")
    keyring.forget_cache()

    follower = LedgerFollower(broker.bootstrap, 0, topic=names.ledger)
    events = [e.envelope async for e in follower.read_to_end() if e.envelope.short_type == "SampleCompleted"]
    for env in events:
        blob = env.payload_record()["prompts_ciphertext"]
        if env.tenant_id == "acme":
            with pytest.raises(CryptoError):
                open_sealed(keyring, "acme", "SampleCompleted", blob)
        else:
            assert open_sealed(keyring, "globex", "SampleCompleted", blob) == secrets_by_tenant["globex"]
    with pytest.raises(CryptoError):
        store.get("acme", refs["acme"].artifact_id)
    assert store.get("globex", refs["globex"].artifact_id) == secrets_by_tenant["globex"] * 100
    with pytest.raises(CryptoError):  # one tenant's key never opens another's artifact
        store.get("globex", refs["acme"].artifact_id)
    report = verify_snapshot(await collect(broker.bootstrap, prefix))
    assert report.ok and report.total_accepted == 3
