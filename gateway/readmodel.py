"""The gateway's own read model, rebuilt from the log at every start (DESIGN: each
process owns its read model; the log is the only system of record).

Two inputs, applied by separate follower tasks in any interleaving:

* ``apply_command``: a command on tensafe.commands (also called synchronously for a
  command this gateway just published, so its future is readable before the 202).
* ``apply_ledger``: an accepted ledger entry (chain rules already applied by
  ``LedgerFollower``).

Everything is tenant-scoped at lookup: ``client(tenant, id)`` returns None for
another tenant's id exactly as for an unknown one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from tensafe.events.commands import SUCCESS_EVENT, Command
from tensafe.events.ledger import LedgerEntry
from tensafe.gateway.futures import FutureRec, FutureTable, future_error

log = logging.getLogger(__name__)

STEP_COMMANDS = frozenset({"OptimStep", "TrainStep"})


@dataclass(slots=True)
class AuditEntry:
    seq: int
    partition: int
    epoch: int
    event_type: str
    event_id: str
    ts_ms: int
    hash: str
    prev_hash: str
    command_id: str | None


@dataclass(slots=True)
class ClientRec:
    client_id: str
    tenant_id: str
    created_ms: int
    create: dict[str, Any]  # CreateTrainingClient fields (as recorded by TrainingClientCreated once ready)
    extras: dict[str, Any] = field(default_factory=dict)  # lora dropout, batch_size, metadata
    status: str = "creating"
    step: int = 0
    epsilon_spent: float = 0.0
    sample_rate: float | None = None
    budget_refused: dict[str, Any] | None = None
    last_event_seq: int | None = None
    partition: int | None = None
    open_commands: set[str] = field(default_factory=set)  # not yet terminal
    order: int = 0


@dataclass(slots=True)
class DatasetRec:
    dataset_id: str
    tenant_id: str
    name: str
    num_records: int
    created_ms: int
    content_hash: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    status: str = "pending"  # pending -> ready (DatasetRegistered) | failed
    artifact_id: str | None = None
    command_id: str | None = None  # the RegisterDataset command
    order: int = 0


@dataclass(slots=True)
class ArtifactRec:
    artifact_id: str
    tenant_id: str
    kind: str  # "checkpoint" | "dataset"
    created_ms: int
    client_id: str | None = None
    dataset_id: str | None = None
    name: str | None = None
    step: int | None = None
    content_hash: str | None = None
    key_id: str | None = None
    size: int | None = None
    include_optimizer: bool | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    epsilon: float | None = None
    dp: dict[str, Any] | None = None  # the client's DP configuration at save time
    ledger_seq: int | None = None
    partition: int | None = None
    order: int = 0


def _clear_fields(payload: dict[str, Any]) -> dict[str, Any]:
    """Command fields worth keeping in memory: everything but ciphertext."""
    return {k: v for k, v in payload.items() if not isinstance(v, bytes | bytearray)}


def sample_rate_of(create: dict[str, Any], dataset: DatasetRec | None) -> float | None:
    """API.md §7.2: q for the accountant, from the client's configuration."""
    if not create.get("dp_enabled", True):
        return None
    ebs = float(create.get("expected_batch_size") or 1)
    if create.get("sampling_mode") == "poisson":
        n = create.get("dataset_size") or (dataset.num_records if dataset else None)
        return min(1.0, ebs / n) if n else None
    n = create.get("dataset_size")
    return min(1.0, ebs / n) if n else 1.0


class ReadModel:
    def __init__(self) -> None:
        self.futures = FutureTable()
        self.clients: dict[str, ClientRec] = {}
        self.datasets: dict[str, DatasetRec] = {}
        self.artifacts: dict[str, ArtifactRec] = {}
        self.checkpoints: dict[int, list[tuple[int, str]]] = {}  # partition -> [(tree_size, root hex)]
        self.audit: dict[str, list[AuditEntry]] = {}  # client id -> entries (seq order per partition)
        self._by_tenant: dict[str, dict[str, dict[str, Any]]] = {}
        self._order = 0
        self.ledger_records = 0
        self.command_records = 0

    # -- tenant-scoped lookups -------------------------------------------------------
    def future(self, tenant_id: str, command_id: str) -> FutureRec | None:
        f = self.futures.get(command_id)
        return f if f is not None and f.tenant_id == tenant_id else None

    def client(self, tenant_id: str, client_id: str) -> ClientRec | None:
        c = self.clients.get(client_id)
        return c if c is not None and c.tenant_id == tenant_id else None

    def dataset(self, tenant_id: str, dataset_id: str) -> DatasetRec | None:
        d = self.datasets.get(dataset_id)
        return d if d is not None and d.tenant_id == tenant_id else None

    def artifact(self, tenant_id: str, artifact_id: str) -> ArtifactRec | None:
        a = self.artifacts.get(artifact_id)
        return a if a is not None and a.tenant_id == tenant_id else None

    def listing(self, tenant_id: str, kind: str) -> list[Any]:
        """The tenant's clients / datasets / artifacts, newest first."""
        items = self._by_tenant.get(tenant_id, {}).get(kind, {})
        return sorted(items.values(), key=lambda r: r.order, reverse=True)

    def _index(self, kind: str, tenant_id: str, key: str, rec: Any) -> None:
        # Newest first by creation time, not by when this process learned of it: at start-up
        # the partitions are replayed concurrently. The counter only breaks ties.
        self._order += 1
        rec.order = int(rec.created_ms) * 1_000_000 + self._order % 1_000_000
        self._by_tenant.setdefault(tenant_id, {}).setdefault(kind, {})[key] = rec

    def pending_steps(self, client_id: str) -> int:
        """Optimizer steps queued for a client and not yet applied (or refused)."""
        c = self.clients.get(client_id)
        if c is None:
            return 0
        n = 0
        for cid in c.open_commands:
            f = self.futures.get(cid)
            if f is not None and f.command_type in STEP_COMMANDS and not f.terminal:
                n += 1
        return n

    # -- commands ----------------------------------------------------------------------
    def apply_command(self, cmd: Command, headers: dict[str, bytes] | None = None) -> FutureRec:
        """A command is known (published by us or seen on the topic). Idempotent."""
        self.command_records += 1
        headers = headers or {}
        extras = _json_header(headers, "tensafe-extras") or {}
        idem = _json_header(headers, "tensafe-idem")
        rec = self.futures.get(cmd.command_id)
        if rec is None:
            rec = self.futures.add(
                FutureRec(
                    command_id=cmd.command_id,
                    tenant_id=cmd.tenant_id,
                    client_id=cmd.client_id,
                    command_type=cmd.command_type,
                    created_ms=cmd.ts_ms,
                    updated_ms=cmd.ts_ms,
                    info={**_clear_fields(cmd.payload), **extras},
                    idem=idem,
                )
            )
        else:
            if rec.idem is None and idem is not None:
                rec.idem = idem
            for k, v in extras.items():
                rec.info.setdefault(k, v)
            if not rec.info.get("_from_command"):
                for k, v in _clear_fields(cmd.payload).items():
                    rec.info.setdefault(k, v)
        rec.info["_from_command"] = True
        if cmd.command_type == "CreateTrainingClient":
            self._client_from_command(cmd, extras)
        elif cmd.command_type == "RegisterDataset":
            self._dataset_from_command(cmd, extras)
        client = self.clients.get(cmd.client_id)
        if client is not None and not rec.terminal:
            client.open_commands.add(cmd.command_id)
        return rec

    def _client_from_command(self, cmd: Command, extras: dict[str, Any]) -> None:
        if cmd.client_id in self.clients:
            return
        c = ClientRec(
            client_id=cmd.client_id,
            tenant_id=cmd.tenant_id,
            created_ms=cmd.ts_ms,
            create=_clear_fields(cmd.payload),
            extras=dict(extras),
        )
        c.sample_rate = sample_rate_of(c.create, self.datasets.get(c.create.get("dataset_id") or ""))
        self.clients[cmd.client_id] = c
        self._index("clients", cmd.tenant_id, cmd.client_id, c)

    def _dataset_from_command(self, cmd: Command, extras: dict[str, Any]) -> None:
        p = cmd.payload
        if p["dataset_id"] in self.datasets:
            return
        d = DatasetRec(
            dataset_id=p["dataset_id"],
            tenant_id=cmd.tenant_id,
            name=p["name"],
            num_records=p["num_records"],
            created_ms=cmd.ts_ms,
            content_hash=extras.get("content_hash"),
            metadata=extras.get("metadata") or {},
            command_id=cmd.command_id,
        )
        self.datasets[d.dataset_id] = d
        self._index("datasets", cmd.tenant_id, d.dataset_id, d)

    # -- ledger ------------------------------------------------------------------------
    def apply_ledger(self, entry: LedgerEntry) -> None:
        self.ledger_records += 1
        env = entry.envelope
        t = env.short_type
        if t == "WriterClaimed":
            return
        if t == "CheckpointSigned":
            p = env.payload_record()
            self.checkpoints.setdefault(entry.partition, []).append((p["tree_size"], p["root"].hex()))
            return
        if env.client_id:
            audit = AuditEntry(
                seq=entry.seq,
                partition=entry.partition,
                epoch=entry.epoch,
                event_type=env.event_type,
                event_id=env.event_id,
                ts_ms=env.ts_ms,
                hash=entry.hash.hex(),
                prev_hash=env.prev_hash.hex(),
                command_id=env.command_id,
            )
            self.audit.setdefault(env.client_id, []).append(audit)
        try:
            self._apply_event(entry, t)
        except Exception:  # noqa: BLE001 - one odd event must not stop the follower
            log.exception("ledger p%d seq %d (%s): could not apply", entry.partition, entry.seq, t)

    def _apply_event(self, entry: LedgerEntry, t: str) -> None:
        env = entry.envelope
        client = self.clients.get(env.client_id) if env.client_id else None
        if client is not None:
            client.last_event_seq = entry.seq
            client.partition = entry.partition
        if t == "CommandAccepted":
            self._accepted(entry)
            return
        payload = env.payload_record()
        if t == "TrainingClientCreated":
            client = self._client_created(entry, payload)
        elif t in ("OptimStepApplied", "TrainStepCompleted") and client is not None:
            client.step = max(client.step, int(payload["step"]))
            client.epsilon_spent = float(payload["epsilon_spent"])
            if client.create.get("dp_enabled", True) and payload.get("sample_rate"):
                client.sample_rate = float(payload["sample_rate"])
        elif t == "BudgetRefused" and client is not None:
            client.budget_refused = payload
        elif t == "StateLoaded" and client is not None:
            client.step = int(payload["step"])
        elif t == "StateSaved":
            self._state_saved(entry, payload)
        elif t == "DatasetRegistered":
            self._dataset_registered(entry, payload)
        elif t == "PackageCreated":
            self._package_created(entry, payload)
        if env.command_id is not None:
            self._outcome(entry, t, payload, client)

    def _accepted(self, entry: LedgerEntry) -> None:
        env = entry.envelope
        if env.command_id is None:
            return
        rec = self.futures.get(env.command_id)
        if rec is None:
            # Published by another gateway and not (yet) seen on the commands topic:
            # the accepted record carries the command's bytes.
            try:
                cmd = Command.decode(env.payload_record()["command_bytes"])
            except Exception:  # noqa: BLE001
                log.warning("CommandAccepted %s: undecodable command bytes", env.command_id)
                return
            rec = self.apply_command(cmd)
            self.command_records -= 1
        self.futures.advance(rec, "running", env.ts_ms)

    def _client_created(self, entry: LedgerEntry, payload: dict[str, Any]) -> ClientRec:
        env = entry.envelope
        c = self.clients.get(env.client_id)
        if c is None:
            c = ClientRec(client_id=env.client_id, tenant_id=env.tenant_id, created_ms=env.ts_ms, create={})
            self.clients[c.client_id] = c
            self._index("clients", c.tenant_id, c.client_id, c)
        c.create.update(payload)
        c.status = "ready"
        c.partition = entry.partition
        c.last_event_seq = entry.seq
        if not c.extras.get("metadata"):
            try:
                c.extras["metadata"] = json.loads(payload.get("metadata_json") or "{}")
            except ValueError:
                c.extras["metadata"] = {}
        c.sample_rate = sample_rate_of(c.create, self.datasets.get(c.create.get("dataset_id") or ""))
        return c

    def _state_saved(self, entry: LedgerEntry, p: dict[str, Any]) -> None:
        env = entry.envelope
        client = self.clients.get(env.client_id)
        fut = self.futures.get(env.command_id) if env.command_id else None
        meta: dict[str, Any] = {}
        if fut is not None:
            meta = fut.info.get("metadata") or _loads(fut.info.get("metadata_json")) or {}
        dp = None
        if client is not None and client.create.get("dp_enabled", True):
            dp = {
                "delta": client.create.get("target_delta"),
                "accountant": client.create.get("accountant"),
                "sampling_mode": client.create.get("sampling_mode"),
                "noise_multiplier": client.create.get("noise_multiplier"),
                "max_grad_norm": client.create.get("max_grad_norm"),
                "sample_rate": client.sample_rate,
                "dataset_size": client.create.get("dataset_size"),
            }
        a = ArtifactRec(
            artifact_id=p["artifact_id"],
            tenant_id=env.tenant_id,
            kind="checkpoint",
            created_ms=env.ts_ms,
            client_id=env.client_id or None,
            name=p["name"],
            step=int(p["step"]),
            content_hash="sha256:" + p["ciphertext_sha256"],
            key_id=p["dek_id"],
            size=int(p["size"]),
            include_optimizer=bool(p["include_optimizer"]),
            metadata=meta,
            epsilon=float(p["epsilon_spent"]),
            dp=dp,
            ledger_seq=entry.seq,
            partition=entry.partition,
        )
        self._put_artifact(a)

    def _put_artifact(self, a: ArtifactRec) -> None:
        """Insert or replace (a replayed event) keeping the listing order."""
        if a.artifact_id not in self.artifacts:
            self._index("artifacts", a.tenant_id, a.artifact_id, a)
        else:
            a.order = self.artifacts[a.artifact_id].order
        self.artifacts[a.artifact_id] = a

    def _package_created(self, entry: LedgerEntry, p: dict[str, Any]) -> None:
        env = entry.envelope
        if not p.get("artifact_id"):
            return  # a v1 record (no stored bytes)
        client = self.clients.get(env.client_id)
        a = ArtifactRec(
            artifact_id=p["artifact_id"],
            tenant_id=env.tenant_id,
            kind="package",
            created_ms=env.ts_ms,
            client_id=env.client_id or None,
            name=p.get("name") or None,
            step=client.step if client is not None else None,
            size=int(p.get("size") or 0),
            metadata={
                "package_id": p["package_id"],
                "manifest_sha256": p["manifest_sha256"],
                "signer_key_id": p["signer_key_id"],
                "recipients": list(p["recipients"]),
                "checkpoint_tree_size": p["checkpoint_tree_size"],
            },
            epsilon=float(p["epsilon"]),
            ledger_seq=entry.seq,
            partition=entry.partition,
        )
        self._put_artifact(a)

    def _dataset_registered(self, entry: LedgerEntry, p: dict[str, Any]) -> None:
        env = entry.envelope
        d = self.datasets.get(p["dataset_id"])
        if d is None:
            d = DatasetRec(p["dataset_id"], env.tenant_id, p["name"], int(p["num_records"]), env.ts_ms)
            self.datasets[d.dataset_id] = d
            self._index("datasets", d.tenant_id, d.dataset_id, d)
        d.status = "ready"
        d.num_records = int(p["num_records"])
        d.artifact_id = p["artifact_id"]
        if d.content_hash is None:
            d.content_hash = "sha256:" + p["content_sha256"]
        if p["artifact_id"] not in self.artifacts:
            a = ArtifactRec(
                artifact_id=p["artifact_id"],
                tenant_id=env.tenant_id,
                kind="dataset",
                created_ms=env.ts_ms,
                dataset_id=d.dataset_id,
                name=d.name,
                content_hash="sha256:" + p["content_sha256"],
                ledger_seq=entry.seq,
                partition=entry.partition,
            )
            self.artifacts[a.artifact_id] = a
            self._index("artifacts", a.tenant_id, a.artifact_id, a)

    # -- outcomes ------------------------------------------------------------------------
    def _outcome(self, entry: LedgerEntry, t: str, payload: dict[str, Any], client: ClientRec | None) -> None:
        env = entry.envelope
        assert env.command_id is not None
        rec = self.futures.get(env.command_id)
        if rec is None:
            # An outcome without a command we know (e.g. the trainer failed an unknown client's
            # command without accepting it): still a future its tenant may ask about.
            ctype = payload.get("command_type", "").rsplit(".", 1)[-1] or _command_type_of(t)
            rec = self.futures.add(
                FutureRec(env.command_id, env.tenant_id, env.client_id, ctype, env.ts_ms, env.ts_ms)
            )
        if rec.terminal:
            return
        if t == "CommandCancelled":
            self._cancelled(rec, env.ts_ms, payload)
            return
        ok = SUCCESS_EVENT.get(rec.command_type) == t
        if t == "CommandFailed":
            rec.error = future_error(payload["error_code"], payload["message"])
        elif t == "BudgetRefused":
            rec.error = {
                "code": "budget_exceeded",
                "message": (
                    f"step refused: epsilon would be {payload['epsilon_would_be']:.4g} "
                    f"> target {payload['target_epsilon']:.4g}"
                ),
                "details": {
                    "epsilon_spent": client.epsilon_spent if client is not None else None,
                    "epsilon_after_step": payload["epsilon_would_be"],
                    "target_epsilon": payload["target_epsilon"],
                },
            }
        elif not ok:
            return  # an intermediate event of this command (none exist today)
        rec.outcome_type = t
        rec.outcome = payload
        rec.outcome_seq = entry.seq
        if client is not None:
            rec.model_step = client.step
        self._finish(rec, "completed" if ok else "failed", env.ts_ms)
        if rec.command_type == "CreateTrainingClient" and not ok and client is not None:
            client.status = "failed"
        if rec.command_type == "RegisterDataset":
            d = self.datasets.get(rec.info.get("dataset_id") or "")
            if d is not None and not ok:
                d.status = "failed"
        if rec.command_type == "CancelCommand":
            self._cancel_outcome(rec, ok, env.ts_ms)

    def _cancelled(self, rec: FutureRec, ts_ms: int, payload: dict[str, Any]) -> None:
        """CommandCancelled names one of (target, cancel command) in command_id and the other
        in the payload; accept either orientation."""
        other = self.futures.get(payload.get("cancel_command_id") or "")
        if rec.command_type == "CancelCommand":
            target = self.futures.get(rec.info.get("target_command_id") or "")
            cancel = rec
        else:
            target, cancel = rec, other
        if target is not None and not target.terminal:
            target.error = {"code": "cancelled", "message": "cancelled before it ran", "details": {}}
            self._finish(target, "cancelled", ts_ms)
        if cancel is not None and not cancel.terminal:
            cancel.outcome_type = "CommandCancelled"
            cancel.outcome = payload
            self._finish(cancel, "completed", ts_ms)

    def _cancel_outcome(self, cancel: FutureRec, ok: bool, ts_ms: int) -> None:
        target = self.futures.get(cancel.info.get("target_command_id") or "")
        if target is None:
            return
        if ok and not target.terminal:
            target.error = {"code": "cancelled", "message": "cancelled before it ran", "details": {}}
            self._finish(target, "cancelled", ts_ms)
        else:
            self.futures.notify(target.command_id)  # the canceller waits on the target

    def _finish(self, rec: FutureRec, status: str, ts_ms: int) -> None:
        client = self.clients.get(rec.client_id)
        if client is not None:
            client.open_commands.discard(rec.command_id)
        self.futures.advance(rec, status, ts_ms)


def _command_type_of(event_short: str) -> str:
    for cmd, ev in SUCCESS_EVENT.items():
        if ev == event_short:
            return cmd
    return "Unknown"


def _loads(s: str | None) -> dict[str, Any] | None:
    if not s:
        return None
    try:
        v = json.loads(s)
    except ValueError:
        return None
    return v if isinstance(v, dict) else None


def _json_header(headers: dict[str, bytes], name: str) -> Any:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None
