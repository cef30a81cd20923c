"""The read model's DuckDB tables, declared once for both the DDL and the Arrow batches.

Each table is a list of (column, DuckDB type, Arrow type). The DDL and the Arrow
schema of a batch come from the same list, so ``INSERT INTO t SELECT * FROM batch``
can never silently shift a column.

Tables (one row per ...):

* ``ledger_events``     accepted ledger record (the log itself, decoded; payload as JSON)
* ``training_clients``  training client: configuration and current status
* ``steps``             DP optimizer step (OptimStepApplied / TrainStepCompleted)
* ``privacy_budgets``   (view) training client: ε target, spent, remaining, refusals, guarantee
* ``artifacts``         checkpoint, dataset or package in the encrypted store
* ``artifact_access``   access to an artifact (explicit ArtifactAccessed + save/load/...)
* ``datasets``          registered server-side dataset
* ``keys``              tenant key event (KEK created, DEK created, rotation, shredding)
* ``projection_state``  ledger partition: where the projection is and the chain tail
* ``projection_meta``   key/value facts about this read model (id, schema version)
* ``audit_entries``     (view) every event with a category and a one-line summary

``privacy_budgets`` is a view over ``training_clients`` (which keeps the step and
refusal counts): the budget is a pure function of the client's row, so a view can
never disagree with it and the projector writes one table per batch, not two.

No PRIMARY KEY constraints: derived rows are updated with ``UPDATE ... FROM`` and new
ones inserted, in one transaction; uniqueness is the projection's job (it is rebuilt
from one source), and unique indexes would only slow the inserts down.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

Column = tuple[str, str, pa.DataType]

_TS = pa.timestamp("ms")

TABLES: dict[str, list[Column]] = {
    "ledger_events": [
        ("partition", "INTEGER", pa.int32()),
        ("seq", "BIGINT", pa.int64()),
        ("offset", "BIGINT", pa.int64()),
        ("epoch", "BIGINT", pa.int64()),
        ("event_type", "VARCHAR", pa.string()),  # short name, e.g. OptimStepApplied
        ("event_id", "VARCHAR", pa.string()),
        ("tenant_id", "VARCHAR", pa.string()),
        ("client_id", "VARCHAR", pa.string()),
        ("command_id", "VARCHAR", pa.string()),
        ("ts", "TIMESTAMP", _TS),  # the writer's ts_ms (inside the hashed bytes: replay-stable)
        ("hash", "VARCHAR", pa.string()),  # hex chain hash H_seq
        ("prev_hash", "VARCHAR", pa.string()),  # hex
        ("payload_json", "JSON", pa.string()),  # bytes fields as hex: ciphertext stays ciphertext
    ],
    "training_clients": [
        ("client_id", "VARCHAR", pa.string()),
        ("tenant_id", "VARCHAR", pa.string()),
        ("model_ref", "VARCHAR", pa.string()),
        ("status", "VARCHAR", pa.string()),  # created | training | budget_exhausted | shredded
        ("created_at", "TIMESTAMP", _TS),
        ("step", "BIGINT", pa.int64()),
        ("lora_rank", "INTEGER", pa.int32()),
        ("dp_enabled", "BOOLEAN", pa.bool_()),
        ("noise_multiplier", "DOUBLE", pa.float64()),
        ("max_grad_norm", "DOUBLE", pa.float64()),
        ("target_epsilon", "DOUBLE", pa.float64()),
        ("target_delta", "DOUBLE", pa.float64()),
        ("epsilon_spent", "DOUBLE", pa.float64()),
        ("accountant", "VARCHAR", pa.string()),
        ("sampling_mode", "VARCHAR", pa.string()),
        ("dataset_id", "VARCHAR", pa.string()),
        ("last_seq", "BIGINT", pa.int64()),
        ("partition", "INTEGER", pa.int32()),
        ("last_loss", "DOUBLE", pa.float64()),
        ("updated_at", "TIMESTAMP", _TS),
        # forward_backward results since the last optimizer step: they make the loss of
        # the next `steps` row. Kept here so a restarted projector computes the same.
        ("fb_loss_weighted", "DOUBLE", pa.float64()),
        ("fb_samples", "BIGINT", pa.int64()),
        ("fb_count", "INTEGER", pa.int32()),
        ("fb_loss_plain", "DOUBLE", pa.float64()),
        ("steps", "BIGINT", pa.int64()),  # DP steps applied (OptimStepApplied + TrainStepCompleted)
        ("refused_steps", "BIGINT", pa.int64()),  # BudgetRefused
    ],
    "steps": [
        ("client_id", "VARCHAR", pa.string()),
        ("tenant_id", "VARCHAR", pa.string()),
        ("step", "BIGINT", pa.int64()),
        ("ts", "TIMESTAMP", _TS),
        ("loss", "DOUBLE", pa.float64()),  # NULL when no forward_backward preceded the step
        ("epsilon_spent", "DOUBLE", pa.float64()),
        ("sample_rate", "DOUBLE", pa.float64()),
        ("noise_multiplier", "DOUBLE", pa.float64()),
        ("samples_in_step", "BIGINT", pa.int64()),
        ("source", "VARCHAR", pa.string()),  # OptimStepApplied | TrainStepCompleted
        ("event_id", "VARCHAR", pa.string()),
        ("partition", "INTEGER", pa.int32()),
        ("seq", "BIGINT", pa.int64()),
    ],
    "artifacts": [
        ("artifact_id", "VARCHAR", pa.string()),
        ("tenant_id", "VARCHAR", pa.string()),
        ("client_id", "VARCHAR", pa.string()),
        ("kind", "VARCHAR", pa.string()),  # checkpoint | dataset | package
        ("name", "VARCHAR", pa.string()),
        ("content_sha256", "VARCHAR", pa.string()),
        ("size", "BIGINT", pa.int64()),
        ("created_at", "TIMESTAMP", _TS),
        ("dek_id", "VARCHAR", pa.string()),
        ("step", "BIGINT", pa.int64()),
        ("epsilon", "DOUBLE", pa.float64()),  # ε spent when the artifact was made
        ("event_id", "VARCHAR", pa.string()),
    ],
    "artifact_access": [
        ("artifact_id", "VARCHAR", pa.string()),
        ("tenant_id", "VARCHAR", pa.string()),
        ("action", "VARCHAR", pa.string()),
        ("ts", "TIMESTAMP", _TS),
        ("client_id", "VARCHAR", pa.string()),
        ("event_id", "VARCHAR", pa.string()),
        ("source_event", "VARCHAR", pa.string()),  # the ledger event type that recorded it
        ("command_id", "VARCHAR", pa.string()),
        ("kind", "VARCHAR", pa.string()),  # checkpoint | dataset | package
        ("size", "BIGINT", pa.int64()),  # bytes, when the event says
    ],
    "datasets": [
        ("dataset_id", "VARCHAR", pa.string()),
        ("tenant_id", "VARCHAR", pa.string()),
        ("client_id", "VARCHAR", pa.string()),
        ("name", "VARCHAR", pa.string()),
        ("num_records", "BIGINT", pa.int64()),
        ("content_sha256", "VARCHAR", pa.string()),
        ("artifact_id", "VARCHAR", pa.string()),
        ("registered_at", "TIMESTAMP", _TS),
        ("event_id", "VARCHAR", pa.string()),
    ],
    "keys": [
        ("tenant_id", "VARCHAR", pa.string()),
        ("action", "VARCHAR", pa.string()),  # kek_created | dek_created | rotated | shredded
        ("kek_id", "VARCHAR", pa.string()),
        ("dek_id", "VARCHAR", pa.string()),
        ("new_kek_id", "VARCHAR", pa.string()),
        ("count", "INTEGER", pa.int32()),  # DEKs re-wrapped (rotated) or destroyed (shredded)
        ("detail", "VARCHAR", pa.string()),  # provider | purpose | reason
        ("ts", "TIMESTAMP", _TS),
        ("event_id", "VARCHAR", pa.string()),
        ("partition", "INTEGER", pa.int32()),
        ("seq", "BIGINT", pa.int64()),
    ],
    "projection_state": [
        ("partition", "INTEGER", pa.int32()),
        ("next_seq", "BIGINT", pa.int64()),
        ("tail_hash", "VARCHAR", pa.string()),  # hex
        ("epoch", "BIGINT", pa.int64()),
        ("last_offset", "BIGINT", pa.int64()),  # last log offset read (accepted or rejected); -1 = none
        ("rejected", "BIGINT", pa.int64()),  # records skipped by the chain rules (stale, duplicate, ...)
    ],
    "projection_meta": [
        ("key", "VARCHAR", pa.string()),
        ("value", "VARCHAR", pa.string()),
    ],
}

# Event types by compliance category (short names).
CATEGORIES: dict[str, tuple[str, ...]] = {
    "training": (
        "TrainingClientCreated",
        "ForwardBackwardCompleted",
        "OptimStepApplied",
        "TrainStepCompleted",
        "SampleCompleted",
    ),
    "privacy": ("BudgetRefused",),
    "artifact": ("StateSaved", "StateLoaded", "ArtifactAccessed", "DatasetRegistered", "PackageCreated"),
    "key": ("TenantKeyCreated", "DataKeyCreated", "KeyRotated", "TenantShredded"),
    "command": ("CommandAccepted", "CommandFailed", "CommandCancelled"),
    "ledger": ("WriterClaimed", "CheckpointSigned"),
}


# What the ε of a client rests on (same words as tensafe.trainer.sampling).
BUDGET_VIEW = """
CREATE OR REPLACE VIEW privacy_budgets AS
SELECT
    client_id,
    tenant_id,
    target_epsilon,
    epsilon_spent,
    CASE WHEN dp_enabled THEN greatest(target_epsilon - epsilon_spent, 0.0) END AS epsilon_remaining,
    target_delta AS delta,
    steps,
    refused_steps,
    sampling_mode,
    CASE
        WHEN NOT coalesce(dp_enabled, false) THEN 'none'
        WHEN sampling_mode = 'poisson' THEN 'poisson_subsampled_gaussian'
        WHEN sampling_mode = 'client_batches' THEN 'conditional_on_client_sampling'
        ELSE 'unknown (' || coalesce(sampling_mode, '') || ')'
    END AS guarantee,
    accountant,
    dataset_id
FROM training_clients
"""

VIEWS = ("privacy_budgets", "audit_entries")


def _in(types: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{t}'" for t in types) + ")"


# A compliance-friendly reading of the log: who, what, when, a one-line summary, and
# the chain position that proves it (partition, seq, hash -> `tensafe audit prove`).
AUDIT_VIEW = f"""
CREATE OR REPLACE VIEW audit_entries AS
SELECT
    e.ts,
    e.tenant_id,
    NULLIF(e.client_id, '') AS client_id,
    CASE
        {" ".join(f"WHEN e.event_type IN {_in(types)} THEN '{cat}'" for cat, types in CATEGORIES.items())}
        ELSE 'other'
    END AS category,
    e.event_type AS action,
    CASE e.event_type
        WHEN 'TrainingClientCreated' THEN printf('client on %s, dp=%s, target epsilon %s, sampling %s',
            p->>'model_ref', p->>'dp_enabled', p->>'target_epsilon', p->>'sampling_mode')
        WHEN 'OptimStepApplied' THEN printf('step %s, epsilon %s, q=%s, sigma=%s',
            p->>'step', p->>'epsilon_spent', p->>'sample_rate', p->>'noise_multiplier')
        WHEN 'TrainStepCompleted' THEN printf('step %s, epsilon %s, batch %s, loss %s',
            p->>'step', p->>'epsilon_spent', p->>'batch_size', p->>'loss')
        WHEN 'ForwardBackwardCompleted' THEN printf('%s samples, loss %s', p->>'num_samples', p->>'loss')
        WHEN 'BudgetRefused' THEN printf('refused step %s: epsilon would be %s > target %s',
            p->>'step_would_be', p->>'epsilon_would_be', p->>'target_epsilon')
        WHEN 'StateSaved' THEN printf('saved %s (%s) at step %s', p->>'artifact_id', p->>'name', p->>'step')
        WHEN 'StateLoaded' THEN printf('loaded %s at step %s', p->>'artifact_id', p->>'step')
        WHEN 'ArtifactAccessed' THEN printf('%s %s %s', p->>'action', p->>'kind', p->>'artifact_id')
        WHEN 'DatasetRegistered' THEN printf('dataset %s (%s records)', p->>'dataset_id', p->>'num_records')
        WHEN 'PackageCreated' THEN printf('package %s, epsilon %s', p->>'package_id', p->>'epsilon')
        WHEN 'SampleCompleted' THEN printf('%s samples from %s prompts', p->>'num_samples', p->>'num_prompts')
        WHEN 'TenantKeyCreated' THEN printf('KEK %s (%s)', p->>'kek_id', p->>'provider')
        WHEN 'DataKeyCreated' THEN printf('DEK %s under %s for %s', p->>'dek_id', p->>'kek_id', p->>'purpose')
        WHEN 'KeyRotated' THEN printf('KEK %s -> %s, %s DEKs re-wrapped',
            p->>'old_kek_id', p->>'new_kek_id', p->>'deks_rewrapped')
        WHEN 'TenantShredded' THEN printf('KEK %s destroyed, %s DEKs: %s',
            p->>'kek_id', p->>'deks_destroyed', p->>'reason')
        WHEN 'CommandAccepted' THEN printf('accepted %s', p->>'command_type')
        WHEN 'CommandFailed' THEN printf('%s failed: %s', p->>'command_type', p->>'error_code')
        WHEN 'CommandCancelled' THEN printf('%s cancelled', p->>'command_type')
        WHEN 'WriterClaimed' THEN printf('writer %s claimed epoch %s', p->>'writer_id', p->>'epoch')
        WHEN 'CheckpointSigned' THEN printf('checkpoint over %s events by %s', p->>'tree_size', p->>'signer_key_id')
        ELSE e.event_type
    END AS summary,
    e.command_id,
    e.event_id,
    e.partition,
    e.seq,
    e.hash
FROM (SELECT *, payload_json::JSON AS p FROM ledger_events) AS e
"""


def arrow_schema(table: str) -> pa.Schema:
    return pa.schema([(name, atype) for name, _, atype in TABLES[table]])


def column_names(table: str) -> list[str]:
    return [name for name, _, _ in TABLES[table]]


def ddl() -> list[str]:
    out = []
    for table, cols in TABLES.items():
        body = ",\n    ".join(f'"{name}" {dtype}' for name, dtype, _ in cols)
        out.append(f"CREATE TABLE IF NOT EXISTS {table} (\n    {body}\n)")
    out.append(BUDGET_VIEW)
    out.append(AUDIT_VIEW)
    return out


def create_schema(con) -> None:  # con: duckdb.DuckDBPyConnection
    for stmt in ddl():
        con.execute(stmt)
