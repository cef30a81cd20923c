"""Synthetic but schema-valid ledger traffic: for the projection's tests, bench and demos.

Events are tuples ``(event_type, payload, tenant_id, client_id, command_id)``, the
shape ``LedgerWriter.append_many`` takes, so the same workload goes through a real
writer on a broker or through :func:`chain_records` into an in-memory chain.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable

from tensafe.events.chain import CLAIM_TYPE, ChainState, Verdict
from tensafe.events.commands import partition_for
from tensafe.events.envelope import make_envelope
from tensafe.events.export import LedgerSnapshot
from tensafe.events.topics import LEDGER

Event = tuple[str, dict, str, str, str | None]


def _sha(*parts: object) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()


def tenant_events(tenant_id: str, *, shred: bool = False, deks: int = 2) -> list[Event]:
    kek = f"kek_{tenant_id}_1"
    ev: list[Event] = [("TenantKeyCreated", {"kek_id": kek, "provider": "local-sealed"}, tenant_id, "", None)]
    for i in range(deks):
        ev.append(("DataKeyCreated", {"dek_id": f"dek_{tenant_id}_{i}", "kek_id": kek, "purpose": "artifacts"},
                   tenant_id, "", None))  # fmt: skip
    ev.append(("KeyRotated", {"old_kek_id": kek, "new_kek_id": f"kek_{tenant_id}_2", "deks_rewrapped": deks},
               tenant_id, "", None))  # fmt: skip
    if shred:
        ev.append(("TenantShredded", {"kek_id": f"kek_{tenant_id}_2", "deks_destroyed": deks, "reason": "gdpr erasure"},
                   tenant_id, "", f"cmd_shred_{tenant_id}"))  # fmt: skip
    return ev


def client_events(
    tenant_id: str,
    client_id: str,
    *,
    steps: int = 5,
    refused: int = 1,
    sampling_mode: str = "poisson",
    rng: random.Random | None = None,
) -> list[Event]:
    """A training client's life: dataset, creation, steps, checkpoint, sampling, refusals, package."""
    rng = rng or random.Random(client_id)
    t, c = tenant_id, client_id
    target, delta = 8.0, 1e-5
    ds = f"ds_{client_id}"
    ev: list[Event] = []
    poisson = sampling_mode == "poisson"
    if poisson:
        ev.append(("DatasetRegistered", {"dataset_id": ds, "name": f"corpus of {c}", "num_records": 1000,
                   "content_sha256": _sha(ds), "artifact_id": f"art_{ds}"}, t, c, f"cmd_{c}_ds"))  # fmt: skip
    ev.append(("TrainingClientCreated", {
        "model_ref": "tiny-gpt2", "base_model_sha256": _sha("tiny-gpt2"), "lora_rank": 8, "lora_alpha": 16.0,
        "target_modules": ["c_attn", "c_proj"], "dp_enabled": True, "noise_multiplier": 1.1, "max_grad_norm": 1.0,
        "target_epsilon": target, "target_delta": delta, "accountant": "rdp", "sampling_mode": sampling_mode,
        "dataset_id": ds if poisson else None, "dataset_size": 1000, "expected_batch_size": 32, "seed": None,
        "metadata_json": "{}",
    }, t, c, f"cmd_{c}_create"))  # fmt: skip
    eps = 0.0
    for s in range(1, steps + 1):
        eps += target / (steps + refused + 2)
        if poisson:
            ev.append(("TrainStepCompleted", {"step": s, "batch_size": rng.randint(20, 40), "num_tokens": 4096,
                       "loss": 3.0 / s, "fraction_clipped": 0.5, "epsilon_spent": eps, "sample_rate": 0.032,
                       "duration_ms": 12.5}, t, c, f"cmd_{c}_ts{s}"))  # fmt: skip
        else:
            for k in range(2):
                n = 16 + k
                ev.append(("ForwardBackwardCompleted", {
                    "num_samples": n, "num_tokens": 64 * n, "loss": 2.0 / s + k, "loss_sum": (2.0 / s + k) * n,
                    "max_grad_norm": 1.0, "fraction_clipped": 0.25, "mean_grad_norm": 0.8, "max_sample_grad_norm": 3.0,
                    "batch_sha256": _sha(c, s, k), "duration_ms": 5.0,
                    "result_ciphertext": rng.randbytes(24) if k else None,
                }, t, c, f"cmd_{c}_fb{s}_{k}"))  # fmt: skip
            ev.append(("OptimStepApplied", {"step": s, "learning_rate": 1e-4, "noise_multiplier": 1.1,
                       "sample_rate": 0.033, "samples_in_step": 33, "expected_batch_size": 32.0, "epsilon_spent": eps,
                       "delta": delta, "accountant": "rdp", "sampling_mode": sampling_mode, "duration_ms": 3.0},
                       t, c, f"cmd_{c}_os{s}"))  # fmt: skip
        if s == max(1, steps // 2):
            art = f"art_{c}_ckpt{s}"
            ev.append(("StateSaved", {"artifact_id": art, "name": f"step-{s}", "content_sha256": _sha(art),
                       "ciphertext_sha256": _sha(art, "ct"), "size": 4096 + s, "dek_id": f"dek_{t}_0",
                       "include_optimizer": True, "step": s, "epsilon_spent": eps, "ledger_offset_hint": -1},
                       t, c, f"cmd_{c}_save{s}"))  # fmt: skip
            ev.append(("ArtifactAccessed", {"artifact_id": art, "action": "get", "kind": "checkpoint",
                       "content_sha256": _sha(art), "size": 4096 + s}, t, c, None))  # fmt: skip
            ev.append(("StateLoaded", {"artifact_id": art, "content_sha256": _sha(art), "step": s}, t, c,
                       f"cmd_{c}_load{s}"))  # fmt: skip
    ev.append(("SampleCompleted", {"num_prompts": 2, "num_samples": 2, "prompt_tokens": 10, "completion_tokens": 20,
               "temperature": 0.7, "max_tokens": 10, "duration_ms": 40.0, "prompts_ciphertext": rng.randbytes(40),
               "completions_ciphertext": rng.randbytes(60)}, t, c, f"cmd_{c}_sample"))  # fmt: skip
    for r in range(refused):
        ev.append(("BudgetRefused", {"step_would_be": steps + 1 + r, "epsilon_would_be": target + 0.5,
                   "target_epsilon": target, "delta": delta}, t, c, f"cmd_{c}_refused{r}"))  # fmt: skip
    ev.append(("PackageCreated", {"package_id": f"pkg_{c}", "manifest_sha256": _sha("pkg", c), "signer_key_id": "k1",
               "recipients": ["auditor"], "epsilon": eps, "delta": delta, "checkpoint_tree_size": 0},
               t, c, f"cmd_{c}_pkg"))  # fmt: skip
    ev.append(("CommandFailed", {"command_type": "tensafe.command.Sample", "error_code": "invalid_argument",
               "message": "max_tokens too large"}, t, c, f"cmd_{c}_bad"))  # fmt: skip
    return ev


def workload(
    n_events: int, partitions: int = 4, *, tenants: int = 2, clients: int = 8, shred_last_tenant: bool = True
) -> dict[int, list[Event]]:
    """About ``n_events`` events spread over ``partitions`` (clients routed with partition_for)."""
    per_client = max(n_events // clients, 30)
    out: dict[int, list[Event]] = {p: [] for p in range(partitions)}
    rng = random.Random(n_events)
    tenant_ids = [f"tenant{i}" for i in range(tenants)]
    for i in range(clients):
        tenant, cid = tenant_ids[i % tenants], f"tc_{i:03d}"
        mode = "poisson" if i % 2 == 0 else "client_batches"
        # TrainStep: 1 event per step; client batches: 3 per step; plus ~12 others.
        steps = max((per_client - 12) // (1 if mode == "poisson" else 3), 1)
        out[partition_for(cid, partitions)].extend(
            client_events(tenant, cid, steps=steps, refused=1 + i % 2, sampling_mode=mode, rng=rng)
        )
    for j, tenant in enumerate(tenant_ids):
        shred = shred_last_tenant and j == len(tenant_ids) - 1
        out[partition_for(tenant, partitions)].extend(tenant_events(tenant, shred=shred))
    return out


def chain_records(partition: int, events: Iterable[Event], *, epoch: int = 1, state: ChainState | None = None,
                  ts_ms: int = 1_750_000_000_000) -> list[bytes]:  # fmt: skip
    """Stored bytes of a valid chain: a WriterClaimed (unless ``state`` continues one), then the events."""
    st = state or ChainState(partition)
    out = []
    if state is None:
        claim = make_envelope(prev_hash=st.tail_hash, partition=partition, seq=st.next_seq, epoch=epoch,
                              event_type=CLAIM_TYPE, payload={"writer_id": "synthetic", "epoch": epoch, "host": "h",
                              "pid": 1}, tenant_id="", client_id="", command_id=None, ts_ms=ts_ms)  # fmt: skip
        out.append(claim.encode())
        assert st.feed(out[-1]).verdict is Verdict.ACCEPTED
    for etype, payload, tenant, client, cmd in events:
        env = make_envelope(prev_hash=st.tail_hash, partition=partition, seq=st.next_seq, epoch=st.epoch,
                            event_type=etype, payload=payload, tenant_id=tenant, client_id=client, command_id=cmd,
                            ts_ms=ts_ms + 500 * st.next_seq, event_id=_sha(partition, st.next_seq)[:32])  # fmt: skip
        raw = env.encode()
        assert st.feed(raw).verdict is Verdict.ACCEPTED
        out.append(raw)
    return out


def snapshot(per_partition: dict[int, list[bytes]], topic: str = LEDGER) -> LedgerSnapshot:
    """An in-memory LedgerSnapshot (as ``read_export`` returns) of raw chains; offset = index."""
    snap = LedgerSnapshot()
    for p in sorted(per_partition):
        snap.ledger.setdefault(p, [])
        for offset, raw in enumerate(per_partition[p]):
            snap.add("ledger", topic, p, offset, 1_750_000_000_000 + offset, None, raw)
    return snap
