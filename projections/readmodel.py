"""The DuckDB read model: ledger records in, compliance tables out.

``ReadModel.apply(batch)`` takes ledger records (``LedgerEntry`` from a follower, or
``RawRecord`` = partition + offset + stored bytes from Faust or an export file) and:

1. skips records at or before the recorded position of their partition
   (``projection_state.last_offset``): replays and redeliveries are no-ops;
2. feeds every other record to the partition's ``ChainState`` (restored from the
   database, hashes included), so the projection checks the chain as it goes:
   accepted records are projected, records the chain rules reject (stale epoch,
   exact duplicate, lost claim) are counted and skipped, and a record that does not
   link stops the batch with :class:`ChainBroken` naming its position;
3. writes all rows of the batch with one Arrow ``INSERT ... SELECT`` per table and
   replaces the derived rows (training clients, budgets) it touched, plus the new
   ``projection_state``, in ONE transaction. A crash leaves the previous batch's
   state; a restart resumes from ``projection_state`` and the chain check continues.

DuckDB allows one read-write process per database file (FINDINGS.md): each process
that needs a read model owns its own, built from the log.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from tensafe.events import codec
from tensafe.events.chain import ChainState, Outcome, Verdict
from tensafe.events.envelope import EVENT_NS, Envelope, decode_envelope
from tensafe.events.ledger import LedgerEntry
from tensafe.projections.schema import (
    SCHEMA_VERSION,
    TABLES,
    VIEWS,
    arrow_schema,
    column_names,
    create_schema,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One stored ledger record as read from Kafka (or an export): bytes untouched."""

    partition: int
    offset: int
    value: bytes
    timestamp_ms: int = 0


Record = LedgerEntry | RawRecord


class ChainBroken(Exception):
    """A record does not link to the projected chain; nothing after it is projected."""

    def __init__(self, partition: int, offset: int, seq: int | None, expected_seq: int, reason: str) -> None:
        self.partition = partition
        self.offset = offset
        self.seq = seq
        self.expected_seq = expected_seq
        self.reason = reason
        super().__init__(
            f"ledger partition {partition} offset {offset} (seq {seq}, expected seq {expected_seq}) "
            f"breaks the chain: {reason}"
        )


@dataclass
class ApplyResult:
    applied: int = 0  # accepted by the chain and projected
    skipped: int = 0  # at or before the recorded position: already projected
    rejected: dict[str, int] = field(default_factory=dict)  # chain-rule rejections by verdict

    def __iadd__(self, other: ApplyResult) -> ApplyResult:
        self.applied += other.applied
        self.skipped += other.skipped
        for k, v in other.rejected.items():
            self.rejected[k] = self.rejected.get(k, 0) + v
        return self


@dataclass(frozen=True)
class Position:
    partition: int
    next_seq: int
    tail_hash: bytes
    epoch: int
    last_offset: int  # -1: nothing read yet

    @property
    def next_offset(self) -> int:
        return self.last_offset + 1


@dataclass
class _Partition:
    chain: ChainState
    last_offset: int = -1
    rejected: int = 0


@dataclass
class _Client:
    """Folded state of one training client; both derived tables are rendered from it."""

    client_id: str
    tenant_id: str
    model_ref: str | None = None
    status: str = "created"
    created_at: int | None = None
    step: int = 0
    lora_rank: int | None = None
    dp_enabled: bool | None = None
    noise_multiplier: float | None = None
    max_grad_norm: float | None = None
    target_epsilon: float | None = None
    target_delta: float | None = None
    epsilon_spent: float = 0.0
    accountant: str | None = None
    sampling_mode: str | None = None
    dataset_id: str | None = None
    last_seq: int | None = None
    partition: int | None = None
    last_loss: float | None = None
    updated_at: int | None = None
    fb_loss_weighted: float = 0.0
    fb_samples: int = 0
    fb_count: int = 0
    fb_loss_plain: float = 0.0
    steps: int = 0
    refused_steps: int = 0


_CLIENT_COLUMNS = column_names("training_clients")


def _bytes_hex(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return value.hex()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def payload_to_json(record: dict[str, Any]) -> str:
    """Payload as JSON text: bytes fields as hex (ciphertext stays ciphertext), strict JSON."""
    text = json.dumps(record, default=_bytes_hex, separators=(",", ":"))
    if "NaN" in text or "Infinity" in text:  # rare: rewrite non-finite floats as strings
        text = json.dumps(_hexify(record), separators=(",", ":"))
    return text


def _hexify(value: Any) -> Any:
    """JSON-safe payload value: bytes as hex (ciphertext stays ciphertext), no NaN."""
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Infinity
    if isinstance(value, list):
        return [_hexify(v) for v in value]
    if isinstance(value, dict):
        return {k: _hexify(v) for k, v in value.items()}
    return value


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


class ReadModel:
    """A DuckDB read model of the ledger, in memory (``None``/``":memory:"``) or in a file."""

    def __init__(self, path: str | Path | None = None, *, read_only: bool = False) -> None:
        self.path = ":memory:" if path in (None, "", ":memory:") else str(path)
        self.read_only = read_only
        self.con = duckdb.connect(self.path, read_only=read_only)
        self._lock = threading.RLock()
        self._listeners: list[Callable[[dict[int, int]], None]] = []
        self.totals = ApplyResult()  # since this object was opened: for monitoring and tests
        if not read_only:
            create_schema(self.con)
            self._init_meta()
        self._load()

    # -- life cycle --------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self.con.close()

    def __enter__(self) -> ReadModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _init_meta(self) -> None:
        have = dict(self.con.execute("SELECT key, value FROM projection_meta").fetchall())
        if "schema_version" in have and int(have["schema_version"]) != SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path}: read model schema v{have['schema_version']}, this code writes "
                f"v{SCHEMA_VERSION}: delete the file and rebuild it from the log"
            )
        missing = {"schema_version": str(SCHEMA_VERSION), "model_id": uuid.uuid4().hex}
        for k, v in missing.items():
            if k not in have:
                self.con.execute("INSERT INTO projection_meta VALUES (?, ?)", [k, v])

    @property
    def model_id(self) -> str:
        """A random id fixed at creation: names this read model's consumer group."""
        row = self.con.execute("SELECT value FROM projection_meta WHERE key = 'model_id'").fetchone()
        return row[0] if row else "readonly"

    def _load(self) -> None:
        """(Re)build the in-memory state (chains, clients) from the database."""
        self._parts: dict[int, _Partition] = {}
        hashes = dict(
            self.con.execute(
                "SELECT partition, string_agg(hash, '' ORDER BY seq) FROM ledger_events GROUP BY partition"
            ).fetchall()
        )
        for p, next_seq, tail_hex, epoch, last_offset, rejected in self.con.execute(
            "SELECT partition, next_seq, tail_hash, epoch, last_offset, rejected FROM projection_state"
        ).fetchall():
            chain = _restore_chain(p, bytes.fromhex(hashes.get(p) or ""), epoch)
            if chain.next_seq != next_seq or chain.tail_hash.hex() != tail_hex:
                raise RuntimeError(
                    f"{self.path}: projection_state of partition {p} (next_seq {next_seq}) disagrees with "
                    f"ledger_events ({chain.next_seq} rows): rebuild the read model from the log"
                )
            self._parts[p] = _Partition(chain, last_offset, rejected)
        self._clients: dict[str, _Client] = {}
        cur = self.con.execute(f"SELECT {', '.join(_q(c) for c in _CLIENT_COLUMNS)} FROM training_clients")
        for row in cur.fetchall():
            values = dict(zip(_CLIENT_COLUMNS, row, strict=True))
            for ts_col in ("created_at", "updated_at"):
                if values[ts_col] is not None:
                    values[ts_col] = _ms(values[ts_col])
            c = _Client(**values)
            self._clients[c.client_id] = c
        # Rows that exist in the database get UPDATEd, others INSERTed.
        self._stored_clients = set(self._clients)
        self._stored_parts = set(self._parts)
        self._shredded: set[str] = {
            t
            for (t,) in self.con.execute(
                "SELECT DISTINCT tenant_id FROM keys WHERE action = 'shredded'"
            ).fetchall()
        }

    # -- positions ---------------------------------------------------------------
    def positions(self) -> dict[int, Position]:
        with self._lock:
            return {
                p: Position(p, st.chain.next_seq, st.chain.tail_hash, st.chain.epoch, st.last_offset)
                for p, st in sorted(self._parts.items())
            }

    def next_offset(self, partition: int) -> int:
        st = self._parts.get(partition)
        return 0 if st is None else st.last_offset + 1

    def chain_state(self, partition: int) -> ChainState:
        """A copy of the partition's chain state (for a follower that resumes here)."""
        with self._lock:
            st = self._parts.get(partition)
            if st is None:
                return ChainState(partition)
            return _restore_chain(partition, bytes(b"".join(st.chain.hashes())), st.chain.epoch)

    def add_listener(self, fn: Callable[[dict[int, int]], None]) -> None:
        """Call ``fn({partition: next_seq})`` after each committed batch (in the applying thread)."""
        self._listeners.append(fn)

    # -- applying ----------------------------------------------------------------
    def apply(self, batch: Iterable[Record]) -> ApplyResult:
        """Project a batch of ledger records; one transaction. See the module doc."""
        if self.read_only:
            raise RuntimeError("read model opened read-only")
        with self._lock:
            writer = _BatchRows()
            result = ApplyResult()
            broken: ChainBroken | None = None
            touched_parts: set[int] = set()
            try:
                for rec in batch:
                    if isinstance(rec, LedgerEntry):
                        # A follower's entry may carry its decoded envelope already.
                        p, offset, raw, env = rec.partition, rec.offset, rec.raw, rec._envelope
                    else:
                        p, offset, raw, env = rec.partition, rec.offset, rec.value, None
                    st = self._parts.get(p)
                    if st is None:
                        st = self._parts[p] = _Partition(ChainState(p))
                    if offset <= st.last_offset:
                        result.skipped += 1  # already read: a replay or a redelivery
                        continue
                    out = st.chain.feed(raw)
                    if out.verdict is Verdict.BROKEN:
                        seq = out.header.seq if out.header is not None else None
                        broken = ChainBroken(p, offset, seq, st.chain.next_seq, out.reason)
                        break  # last_offset stays before it: a restart meets it again
                    st.last_offset = offset
                    touched_parts.add(p)
                    if out.verdict is Verdict.ACCEPTED:
                        self._project(p, offset, raw, out, env, writer)
                        result.applied += 1
                    else:
                        st.rejected += 1
                        result.rejected[out.verdict.value] = result.rejected.get(out.verdict.value, 0) + 1
            except BaseException:
                self._load()  # chains and clients advanced in memory; the database did not
                raise
            if touched_parts:
                self._commit(writer, touched_parts)
            self.totals += result
        if broken is not None:
            raise broken
        return result

    def _commit(self, rows: _BatchRows, touched_parts: set[int]) -> None:
        con = self.con
        clients = [self._clients[c] for c in sorted(rows.touched_clients) if c in self._clients]
        state_rows = [
            (p, st.chain.next_seq, st.chain.tail_hash.hex(), st.chain.epoch, st.last_offset, st.rejected)
            for p, st in ((p, self._parts[p]) for p in sorted(touched_parts))
        ]
        con.begin()
        try:
            for table, table_rows in rows.tables.items():
                if table_rows:
                    _insert(con, table, table_rows)
            if clients:
                _upsert(con, "training_clients", [self._client_row(c) for c in clients], self._stored_clients)
            _upsert(con, "projection_state", state_rows, self._stored_parts)
            con.commit()
        except BaseException:
            con.rollback()
            self._load()  # the in-memory chains and clients ran ahead of the database
            raise
        self._stored_clients.update(c.client_id for c in clients)
        self._stored_parts.update(touched_parts)
        if self._listeners:
            done = {p: self._parts[p].chain.next_seq for p in touched_parts}
            for fn in self._listeners:
                try:
                    fn(done)
                except Exception:  # a listener must not undo a committed batch
                    log.exception("read model listener failed")

    # -- projecting one accepted record ------------------------------------------------
    def _project(
        self, p: int, offset: int, raw: bytes, out: Outcome, env: Envelope | None, rows: _BatchRows
    ) -> None:
        if env is None:
            env = decode_envelope(raw)  # by hand for the current schema: ~10x fastavro
        short = env.event_type.removeprefix(EVENT_NS)
        try:
            rec: dict[str, Any] | None = codec.decode_as(env.event_type, env.payload)
            payload_json = payload_to_json(rec)
        except (codec.DecodeError, KeyError) as exc:
            # The chain accepted it, so it is part of the record; a newer schema than
            # this reader knows must not stop the projection.
            log.warning("partition %d seq %d: payload of %s not decodable: %s", p, env.seq, short, exc)
            rec, payload_json = None, None
        ts = env.ts_ms
        rows.tables["ledger_events"].append(
            (
                p, env.seq, offset, env.epoch, short, env.event_id, env.tenant_id, env.client_id,
                env.command_id, ts, out.hash.hex(), env.prev_hash.hex(), payload_json,
            )
        )  # fmt: skip
        if rec is None:
            return
        handler = _HANDLERS.get(short)
        client = self._clients.get(env.client_id) if env.client_id else None
        if handler is not None:
            client = handler(self, env, rec, client, rows) or client
        if client is not None:
            client.last_seq = env.seq
            client.partition = p
            client.updated_at = ts
            rows.touched_clients.add(client.client_id)

    # -- event handlers (return the client they created, if any) -----------------------
    def _on_client_created(self, env: Envelope, r: dict, c: _Client | None, rows: _BatchRows) -> _Client:
        c = _Client(client_id=env.client_id, tenant_id=env.tenant_id)
        self._clients[c.client_id] = c
        c.model_ref = r["model_ref"]
        c.created_at = env.ts_ms
        c.lora_rank = r["lora_rank"]
        c.dp_enabled = r["dp_enabled"]
        c.noise_multiplier = r["noise_multiplier"]
        c.max_grad_norm = r["max_grad_norm"]
        c.target_epsilon = r["target_epsilon"]
        c.target_delta = r["target_delta"]
        c.accountant = r["accountant"]
        c.sampling_mode = r["sampling_mode"]
        c.dataset_id = r.get("dataset_id")
        return c

    def _on_forward_backward(self, env: Envelope, r: dict, c: _Client | None, rows: _BatchRows) -> None:
        if c is None:
            return
        n = int(r["num_samples"])
        c.fb_loss_weighted += float(r["loss"]) * n
        c.fb_samples += n
        c.fb_count += 1
        c.fb_loss_plain += float(r["loss"])
        c.last_loss = float(r["loss"])
        c.status = "training"

    def _on_optim_step(self, env: Envelope, r: dict, c: _Client | None, rows: _BatchRows) -> None:
        loss = None
        if c is not None and c.fb_count:
            # The step's loss: sample-weighted mean of the forward_backward calls since the last step.
            loss = c.fb_loss_weighted / c.fb_samples if c.fb_samples else c.fb_loss_plain / c.fb_count
        rows.tables["steps"].append(
            (
                env.client_id, env.tenant_id, r["step"], env.ts_ms, loss, r["epsilon_spent"], r["sample_rate"],
                r["noise_multiplier"], r["samples_in_step"], "OptimStepApplied", env.event_id, env.partition, env.seq,
            )
        )  # fmt: skip
        if c is not None:
            c.step = int(r["step"])
            c.epsilon_spent = float(r["epsilon_spent"])
            c.steps += 1
            c.fb_loss_weighted, c.fb_samples, c.fb_count, c.fb_loss_plain = 0.0, 0, 0, 0.0
            c.status = "training"

    def _on_train_step(self, env: Envelope, r: dict, c: _Client | None, rows: _BatchRows) -> None:
        rows.tables["steps"].append(
            (
                env.client_id, env.tenant_id, r["step"], env.ts_ms, r["loss"], r["epsilon_spent"], r["sample_rate"],
                c.noise_multiplier if c is not None else None, r["batch_size"], "TrainStepCompleted", env.event_id,
                env.partition, env.seq,
            )
        )  # fmt: skip
        if c is not None:
            c.step = int(r["step"])
            c.epsilon_spent = float(r["epsilon_spent"])
            c.last_loss = float(r["loss"])
            c.steps += 1
            c.status = "training"

    def _on_budget_refused(self, env: Envelope, r: dict, c: _Client | None, rows: _BatchRows) -> None:
        if c is not None:
            c.refused_steps += 1
            c.status = "budget_exhausted"

    def _on_state_saved(self, env: Envelope, r: dict, c: _Client | None, rows: _BatchRows) -> None:
        rows.tables["artifacts"].append(
            (
                r["artifact_id"], env.tenant_id, env.client_id or None, "checkpoint", r["name"], r["content_sha256"],
                r["size"], env.ts_ms, r["dek_id"], r["step"], r["epsilon_spent"], env.event_id,
            )
        )  # fmt: skip
        self._access(env, r["artifact_id"], "put", "checkpoint", r["size"], rows)

    def _on_state_loaded(self, env: Envelope, r: dict, c: _Client | None, rows: _BatchRows) -> None:
        self._access(env, r["artifact_id"], "get", "checkpoint", None, rows)
        if c is not None:
            c.step = int(r["step"])

    def _on_artifact_accessed(self, env: Envelope, r: dict, c: _Client | None, rows: _BatchRows) -> None:
        self._access(env, r["artifact_id"], r["action"], r["kind"], r["size"], rows)

    def _on_dataset_registered(self, env: Envelope, r: dict, c: _Client | None, rows: _BatchRows) -> None:
        artifact_id = r["artifact_id"] or r["dataset_id"]
        rows.tables["datasets"].append(
            (
                r["dataset_id"], env.tenant_id, env.client_id or None, r["name"], r["num_records"],
                r["content_sha256"], artifact_id, env.ts_ms, env.event_id,
            )
        )  # fmt: skip
        rows.tables["artifacts"].append(
            (
                artifact_id, env.tenant_id, env.client_id or None, "dataset", r["name"], r["content_sha256"],
                None, env.ts_ms, None, None, None, env.event_id,
            )
        )  # fmt: skip
        self._access(env, artifact_id, "put", "dataset", None, rows)

    def _on_package_created(self, env: Envelope, r: dict, c: _Client | None, rows: _BatchRows) -> None:
        rows.tables["artifacts"].append(
            (
                r["package_id"], env.tenant_id, env.client_id or None, "package", r["package_id"],
                r["manifest_sha256"], None, env.ts_ms, None, c.step if c is not None else None, r["epsilon"],
                env.event_id,
            )
        )  # fmt: skip
        self._access(env, r["package_id"], "put", "package", None, rows)

    def _on_key_event(self, env: Envelope, r: dict, c: _Client | None, rows: _BatchRows) -> None:
        short = env.event_type.removeprefix(EVENT_NS)
        if short == "TenantKeyCreated":
            row = ("kek_created", r["kek_id"], None, None, None, r["provider"])
        elif short == "DataKeyCreated":
            row = ("dek_created", r["kek_id"], r["dek_id"], None, None, r["purpose"])
        elif short == "KeyRotated":
            row = ("rotated", r["old_kek_id"], None, r["new_kek_id"], r["deks_rewrapped"], None)
        else:  # TenantShredded
            row = ("shredded", r["kek_id"], None, None, r["deks_destroyed"], r["reason"])
            self._shredded.add(env.tenant_id)
            # Every client of the tenant shows it: status is "shredded" whatever came before.
            rows.touched_clients.update(
                cid for cid, cl in self._clients.items() if cl.tenant_id == env.tenant_id
            )
        rows.tables["keys"].append((env.tenant_id, *row, env.ts_ms, env.event_id, env.partition, env.seq))

    def _access(
        self, env: Envelope, artifact_id: str, action: str, kind: str, size: int | None, rows: _BatchRows
    ) -> None:
        # Typed events use the artifact store's own verbs (put/get), so `action = 'get'`
        # finds every read whichever event recorded it.
        rows.tables["artifact_access"].append(
            (
                artifact_id, env.tenant_id, action, env.ts_ms, env.client_id or None, env.event_id,
                env.event_type.removeprefix(EVENT_NS), env.command_id, kind, size,
            )
        )  # fmt: skip

    # -- rendering derived rows ----------------------------------------------------------
    def _status(self, c: _Client) -> str:
        # Shredding is sticky and tenant-wide; deciding it at render time makes the result
        # independent of how partitions interleave (live projector vs replay).
        return "shredded" if c.tenant_id in self._shredded else c.status

    def _client_row(self, c: _Client) -> tuple:
        values = {f.name: getattr(c, f.name) for f in fields(c)}
        values["status"] = self._status(c)
        return tuple(values[col] for col in _CLIENT_COLUMNS)

    # -- queries -----------------------------------------------------------------------------
    def sql(self, query: str, params: Sequence[Any] | None = None) -> tuple[list[str], list[tuple]]:
        """Run a query; returns (column names, rows)."""
        with self._lock:
            cur = self.con.execute(query, params) if params is not None else self.con.execute(query)
            if cur.description is None:
                return [], []
            return [d[0] for d in cur.description], cur.fetchall()

    def count(self, table: str) -> int:
        return self.sql(f"SELECT count(*) FROM {table}")[1][0][0]

    def dump(self, tables: Iterable[str] | None = None) -> dict[str, list[tuple]]:
        """Every row of every projected table (and the audit view), fully ordered: for comparisons."""
        names = (
            list(tables)
            if tables is not None
            else [t for t in TABLES if t != "projection_meta"] + list(VIEWS)
        )
        out = {}
        for t in names:
            cols, _ = self.sql(f"SELECT * FROM {t} LIMIT 0")
            order = ", ".join(_q(c) for c in cols)
            out[t] = self.sql(f"SELECT * FROM {t} ORDER BY {order}")[1]
        return out


_HANDLERS: dict[str, Callable[..., _Client | None]] = {
    "TrainingClientCreated": ReadModel._on_client_created,
    "ForwardBackwardCompleted": ReadModel._on_forward_backward,
    "OptimStepApplied": ReadModel._on_optim_step,
    "TrainStepCompleted": ReadModel._on_train_step,
    "BudgetRefused": ReadModel._on_budget_refused,
    "StateSaved": ReadModel._on_state_saved,
    "StateLoaded": ReadModel._on_state_loaded,
    "ArtifactAccessed": ReadModel._on_artifact_accessed,
    "DatasetRegistered": ReadModel._on_dataset_registered,
    "PackageCreated": ReadModel._on_package_created,
    "TenantKeyCreated": ReadModel._on_key_event,
    "DataKeyCreated": ReadModel._on_key_event,
    "KeyRotated": ReadModel._on_key_event,
    "TenantShredded": ReadModel._on_key_event,
}

_APPEND_ONLY = ("ledger_events", "steps", "artifacts", "artifact_access", "datasets", "keys")


class _BatchRows:
    """Rows of one batch, as tuples per table (transposed into Arrow columns at commit)."""

    def __init__(self) -> None:
        self.tables: dict[str, list[tuple]] = {t: [] for t in _APPEND_ONLY}
        self.touched_clients: set[str] = set()


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _arrow(table: str, rows: list[tuple]) -> pa.Table:
    schema = arrow_schema(table)
    columns = list(zip(*rows, strict=True))
    return pa.Table.from_arrays(
        [pa.array(col, type=f.type) for col, f in zip(columns, schema, strict=True)], schema=schema
    )


# Below this many rows a parameterised VALUES statement beats registering an Arrow
# table (~1.5 ms vs ~5 ms a statement): it keeps a lone live event cheap, while
# replay batches take the Arrow path (~1M rows/s).
SMALL_BATCH = 32
FEW_UPDATES = 4


def _values_sql(table: str, n: int) -> str:
    # TIMESTAMP columns are passed as epoch ms (the Arrow path types them as timestamp[ms]).
    one = (
        "("
        + ", ".join("epoch_ms(?::BIGINT)" if dtype == "TIMESTAMP" else "?" for _, dtype, _ in TABLES[table])
        + ")"
    )
    return f"INSERT INTO {table} VALUES " + ", ".join([one] * n)


def _insert(con: duckdb.DuckDBPyConnection, table: str, rows: list[tuple]) -> None:
    # One INSERT per table per batch: ~1M rows/s via Arrow vs ~1k rows/s row by row.
    if len(rows) <= SMALL_BATCH:
        con.execute(_values_sql(table, len(rows)), [v for row in rows for v in row])
        return
    con.register("_tensafe_batch", _arrow(table, rows))
    try:
        con.execute(f"INSERT INTO {table} SELECT * FROM _tensafe_batch")
    finally:
        con.unregister("_tensafe_batch")


def _upsert(con: duckdb.DuckDBPyConnection, table: str, rows: list[tuple], stored: set) -> None:
    """Write rows keyed by their first column: update those in ``stored``, insert the rest.

    A live batch usually touches one client and one partition: a plain
    ``UPDATE ... WHERE key = ?`` per row is the cheapest (DuckDB's per-statement cost
    is what a lone event pays; ``UPDATE ... FROM (VALUES ...)`` measured ~3x slower).
    Many rows (replay): one DELETE and one bulk INSERT.
    """
    cols = TABLES[table]
    key = _q(cols[0][0])
    old = [r for r in rows if r[0] in stored]
    new = [r for r in rows if r[0] not in stored]
    if len(old) <= FEW_UPDATES:
        sets = ", ".join(
            f"{_q(c)} = " + ("epoch_ms(?::BIGINT)" if t == "TIMESTAMP" else "?") for c, t, _ in cols[1:]
        )
        for r in old:
            con.execute(f"UPDATE {table} SET {sets} WHERE {key} = ?", [*r[1:], r[0]])
    else:
        con.execute(f"DELETE FROM {table} WHERE {key} IN ({', '.join('?' * len(old))})", [r[0] for r in old])
        new += old
    if new:
        _insert(con, table, new)


def _restore_chain(partition: int, hashes: bytes, epoch: int) -> ChainState:
    """A ChainState positioned after ``hashes`` (32 bytes per accepted record, by seq)."""
    return ChainState.restore(partition, hashes, epoch)


_EPOCH = dt.datetime(1970, 1, 1)


def _ms(ts: dt.datetime) -> int:
    """DuckDB TIMESTAMP (naive datetime, UTC) -> ms since the epoch, in integers (no float rounding)."""
    return (ts.replace(tzinfo=None) - _EPOCH) // dt.timedelta(milliseconds=1)
