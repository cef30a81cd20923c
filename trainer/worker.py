"""The trainer worker: consumes tensafe.commands, executes, appends outcomes to the ledger.

One task per owned partition *p*: it is the single writer of ledger partition *p*
and executes the commands of partition *p* in offset order.

Crash safety (kill -9 at any instant):
* After every state-changing command (create, optim/train step, load) the client's
  state is snapshotted, encrypted under the tenant's key, together with the command
  offset it reflects and that command's outcome. Only then is the outcome appended.
* On start the worker replays the ledger (what is done), re-reads the command
  partition from the beginning and, per client, restores the latest snapshot:
  commands at or before the snapshot offset are skipped; a snapshot's outcome that
  never reached the ledger is appended now; forward_backward commands after the
  snapshot that are already done are re-executed silently to rebuild the
  accumulated gradient (deterministic: no noise until optim_step); everything not
  done runs normally. Nothing is lost, nothing is applied twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from tensafe.crypto.sealed import open_sealed, seal
from tensafe.events import codec, kafka_io
from tensafe.events.commands import FAILURE_EVENTS, SUCCESS_EVENT, TENANT_COMMANDS, Command
from tensafe.events.ledger import LedgerEntry, LedgerWriter
from tensafe.events.topics import topic_names

log = logging.getLogger(__name__)

SNAPSHOT_PURPOSE = "autosave"


class TrainerWorker:
    def __init__(
        self,
        bootstrap: str,
        keyring,
        store,
        state_dir: str | Path,
        *,
        partitions: list[int],
        topic_prefix: str = "",
        signer=None,
        checkpoint_every: int = 256,
        checkpoint_interval_s: float = 10.0,
        ledger_id: str = "default",
        test_mode: bool = False,
    ) -> None:
        self.bootstrap = bootstrap
        self.keyring = keyring
        self.store = store
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.partitions = partitions
        self.topics = topic_names(topic_prefix)
        self.signer = signer
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval_s = checkpoint_interval_s
        self.ledger_id = ledger_id
        self.test_mode = test_mode
        self.writers: dict[int, LedgerWriter] = {}
        self.sessions: dict[str, Any] = {}
        self.creates: dict[str, tuple[str, dict]] = {}  # client -> (tenant, TrainingClientCreated payload)
        self.datasets: dict[str, tuple[str, str, int]] = {}  # dataset -> (tenant, artifact id, records)
        self._compute = asyncio.Lock()  # one torch computation at a time (2 cores)
        self._pending_access: list[dict] = []  # artifact put/get of the running command, for the ledger
        self._dataset_texts_cache: dict[str, list[str]] = {}
        self.client_events: dict[
            str, list[tuple[int, int]]
        ] = {}  # client -> (seq, offset) of provable events
        self.ready = asyncio.Event()

    # -- life cycle -------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        for p in self.partitions:
            w = LedgerWriter(
                self.bootstrap,
                p,
                topic=self.topics.ledger,
                checkpoint_topic=self.topics.checkpoints,
                signer=self.signer,
                checkpoint_every=self.checkpoint_every if self.signer else 0,
                ledger_id=self.ledger_id,
                on_replay=self._on_replay,
            )
            await w.start()
            self.writers[p] = w
        self.ready.set()
        try:
            tasks = [self._consume(stop)]
            if self.signer is not None and self.checkpoint_interval_s > 0:
                tasks.append(self._checkpoint_periodically(stop))
            await asyncio.gather(*tasks)
        finally:
            for w in self.writers.values():
                if self.signer is not None and w.epoch and w.uncheckpointed:
                    try:
                        await w.checkpoint()
                    except Exception:  # stopping anyway; the next start checkpoints again
                        log.exception("final checkpoint failed")
                await w.stop()

    async def _checkpoint_periodically(self, stop: asyncio.Event) -> None:
        """Sign a checkpoint of every partition with new events, every few seconds, so
        recent events are pinned (truncation and edits detectable) without waiting for
        ``checkpoint_every`` events."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.checkpoint_interval_s)
            except TimeoutError:
                pass
            for w in self.writers.values():
                if w.uncheckpointed and not stop.is_set():
                    try:
                        await w.checkpoint()
                    except Exception:  # noqa: BLE001 — the next round tries again
                        log.exception("periodic checkpoint of partition %d failed", w.partition)

    def _on_replay(self, entry: LedgerEntry) -> None:
        env = entry.envelope
        if env.short_type in PROVABLE_EVENTS and env.client_id:
            self.client_events.setdefault(env.client_id, []).append((entry.seq, entry.offset))
        if env.short_type == "TrainingClientCreated":
            self.creates[env.client_id] = (env.tenant_id, env.payload_record())
        elif env.short_type == "DatasetRegistered":
            rec = env.payload_record()
            self.datasets[rec["dataset_id"]] = (env.tenant_id, rec["artifact_id"], rec["num_records"])

    async def _consume(self, stop: asyncio.Event) -> None:
        """One reader for every owned partition (one idle long-poll), running ahead of
        execution so a CancelCommand is known before its queued target is reached; one
        executor per partition keeps each partition's order."""
        queues: dict[int, asyncio.Queue] = {p: asyncio.Queue(maxsize=10_000) for p in self.partitions}
        cancels: dict[str, tuple[str, str]] = {}  # target command id -> (cancel command id, tenant)

        async def read() -> None:
            try:
                starts = {p: 0 for p in self.partitions}
                async for rec in kafka_io.follow_partitions(
                    self.bootstrap, self.topics.commands, starts, stop=stop
                ):
                    try:
                        cmd = Command.decode(rec.value)
                    except codec.DecodeError as exc:
                        log.error(
                            "partition %d offset %d: undecodable command skipped: %s",
                            rec.partition,
                            rec.offset,
                            exc,
                        )
                        continue
                    if cmd.command_type == "CancelCommand":
                        cancels.setdefault(cmd.payload["target_command_id"], (cmd.command_id, cmd.tenant_id))
                    await queues[rec.partition].put((rec.offset, cmd))
            finally:
                for q in queues.values():
                    await q.put(None)

        async def execute(p: int) -> None:
            writer = self.writers[p]
            while (item := await queues[p].get()) is not None:
                offset, cmd = item
                await self._handle(writer, offset, cmd, cancels)

        reader = asyncio.create_task(read())
        try:
            await asyncio.gather(*(execute(p) for p in self.partitions))
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    # -- one command --------------------------------------------------------------
    def _done(self, writer: LedgerWriter, cmd: Command) -> str | None:
        names = [SUCCESS_EVENT[cmd.command_type], *FAILURE_EVENTS]
        for name in names:
            if writer.is_done(cmd.command_id, name):
                return name
        return None

    async def _handle(
        self, writer: LedgerWriter, offset: int, cmd: Command, cancels: dict | None = None
    ) -> None:
        done = self._done(writer, cmd)
        cancel = (cancels or {}).get(cmd.command_id)
        if (
            done is None
            and cancel is not None
            and cancel[1] == cmd.tenant_id
            and cmd.command_type != "CancelCommand"
        ):
            # cancelled while queued: one event ends both the target and the cancel command
            await writer.append(
                "CommandCancelled",
                {"command_type": "tensafe.command." + cmd.command_type, "cancel_command_id": cancel[0]},
                tenant_id=cmd.tenant_id,
                client_id=cmd.client_id,
                command_id=cmd.command_id,
            )
            return
        if cmd.command_type == "CancelCommand" and writer.is_done(
            cmd.payload["target_command_id"], "CommandCancelled"
        ):
            return  # resolved together with its target
        if cmd.command_type in ("RegisterDataset", "CreateTrainingClient", "CancelCommand", *TENANT_COMMANDS):
            if done is None:
                await self._execute(writer, offset, cmd)
            return
        try:
            session = await self._session(writer, cmd.client_id)
        except Exception as exc:  # noqa: BLE001 — e.g. a shredded tenant's snapshot no longer opens
            log.warning("client %s cannot be restored: %s", cmd.client_id, exc)
            if done is None:
                code = getattr(exc, "code", None) or "internal_error"
                await self._fail(writer, cmd, code, f"{type(exc).__name__}: {exc}")
            return
        if session is None:
            if done is None:
                await self._fail(writer, cmd, "not_found", f"training client {cmd.client_id} does not exist")
            return
        if session.tenant_id != cmd.tenant_id:
            if done is None:
                await self._fail(writer, cmd, "not_found", f"training client {cmd.client_id} does not exist")
            return
        if offset <= session.snapshot_offset:
            return  # reflected in the snapshot
        if done is not None:
            if (
                cmd.command_type == "ForwardBackward"
                and done == "ForwardBackwardCompleted"
                and not cmd.payload["forward_only"]
            ):
                batch = self._open(cmd, "batch_ciphertext", "tensafe.data.TokenBatch")
                async with self._compute:
                    await asyncio.to_thread(session.forward_backward, cmd.payload, batch)
            return
        await self._execute(writer, offset, cmd, session)

    async def _execute(self, writer: LedgerWriter, offset: int, cmd: Command, session=None) -> None:
        from tensafe.trainer.session import CommandError

        self._pending_access.clear()
        await writer.append(
            "CommandAccepted",
            {
                "command_type": "tensafe.command." + cmd.command_type,
                "command_offset": offset,
                "command_sha256": _sha256(cmd.encode()),
                "command_bytes": cmd.encode(),
            },
            tenant_id=cmd.tenant_id,
            client_id=cmd.client_id,
            command_id=cmd.command_id,
        )
        try:
            async with self._compute:
                outcome = await self._run(cmd, offset, session, writer)
        except CommandError as exc:
            await self._fail(writer, cmd, exc.code, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 — any failure must end the future, never hang it
            log.exception("command %s failed", cmd.command_id)
            code = getattr(exc, "code", None) or (
                "invalid_request" if isinstance(exc, ValueError) else "internal_error"
            )
            await self._fail(writer, cmd, code, f"{type(exc).__name__}: {exc}")
            return
        if outcome is None:
            return
        event_type, payload, state_changed = outcome
        for access in self._pending_access:
            await writer.append("ArtifactAccessed", access, tenant_id=cmd.tenant_id, client_id=cmd.client_id)
        self._pending_access.clear()
        if state_changed and cmd.client_id in self.sessions:
            await asyncio.to_thread(
                self._snapshot, self.sessions[cmd.client_id], offset, cmd, event_type, payload
            )
        done = await writer.append(
            event_type, payload, tenant_id=cmd.tenant_id, client_id=cmd.client_id, command_id=cmd.command_id
        )
        if event_type in PROVABLE_EVENTS and done.offset is not None:
            self.client_events.setdefault(cmd.client_id, []).append((done.seq, done.offset))

    async def _fail(self, writer: LedgerWriter, cmd: Command, code: str, message: str) -> None:
        await writer.append(
            "CommandFailed",
            {
                "command_type": "tensafe.command." + cmd.command_type,
                "error_code": code,
                "message": message[:2000],
            },
            tenant_id=cmd.tenant_id,
            client_id=cmd.client_id,
            command_id=cmd.command_id,
        )

    async def _run(
        self, cmd: Command, offset: int, session, writer: LedgerWriter
    ) -> tuple[str, dict, bool] | None:
        from tensafe.trainer.session import ClientSession, CommandError

        t, p = cmd.command_type, cmd.payload
        if t == "RegisterDataset":
            records = self._dataset_records(cmd)
            blob = json.dumps(records).encode()
            ref = await asyncio.to_thread(self.store.put, cmd.tenant_id, "dataset", blob, {"name": p["name"]})
            self._access(ref, "put")
            self.datasets[p["dataset_id"]] = (cmd.tenant_id, ref.artifact_id, len(records))
            return (
                "DatasetRegistered",
                {
                    "dataset_id": p["dataset_id"],
                    "name": p["name"],
                    "num_records": len(records),
                    "content_sha256": ref.content_sha256,
                    "artifact_id": ref.artifact_id,
                },
                False,
            )
        if t == "CreateTrainingClient":
            create = dict(p)
            create.setdefault("base_model_sha256", "")
            if create.get("seed") is None:
                create["seed"] = secrets.randbits(63)  # recorded, so a restart rebuilds the same adapter
            if create["sampling_mode"] == "poisson":
                ds = self.datasets.get(create.get("dataset_id") or "")
                if ds is None or ds[0] != cmd.tenant_id:
                    raise CommandError("not_found", f"dataset {create.get('dataset_id')!r} does not exist")
                create["dataset_size"] = ds[2]
            event = {k: create.get(k) for k in _CREATED_FIELDS}
            event["base_model_sha256"] = await asyncio.to_thread(_base_model_digest, create["model_ref"])
            try:
                new = await asyncio.to_thread(
                    ClientSession, cmd.client_id, cmd.tenant_id, event, test_mode=self.test_mode
                )
            except (ValueError, FileNotFoundError) as exc:
                raise CommandError("invalid_config", str(exc)) from exc
            new.snapshot_offset = offset
            self.sessions[cmd.client_id] = new
            self.creates[cmd.client_id] = (cmd.tenant_id, event)
            return "TrainingClientCreated", event, True
        if t in TENANT_COMMANDS:
            return await asyncio.to_thread(self._tenant_key_command, cmd)
        if t == "CancelCommand":
            return (
                "CommandFailed",
                {
                    "command_type": "tensafe.command.CancelCommand",
                    "error_code": "not_cancellable",
                    "message": "the target command was already taken by the trainer",
                },
                False,
            )
        if t == "ForwardBackward":
            batch = self._open(cmd, "batch_ciphertext", "tensafe.data.TokenBatch")
            out = await asyncio.to_thread(session.forward_backward, p, batch)
            if out.sealed_result is not None:
                out.payload["result_ciphertext"] = seal(
                    self.keyring, cmd.tenant_id, "ForwardBackwardCompleted", out.sealed_result
                )
            return out.event_type, out.payload, False
        if t == "OptimStep":
            out = await asyncio.to_thread(session.optim_step, p)
            return out.event_type, out.payload, out.state_changed
        if t == "TrainStep":
            texts = await asyncio.to_thread(self._dataset_texts, cmd.tenant_id, session)
            out = await asyncio.to_thread(session.train_step, p, texts)
            return out.event_type, out.payload, out.state_changed
        if t == "Sample":
            inputs = self._open(cmd, "prompts_ciphertext", "tensafe.data.SampleInput")
            out = await asyncio.to_thread(session.sample, p, inputs)
            out.payload["prompts_ciphertext"] = p["prompts_ciphertext"]
            out.payload["completions_ciphertext"] = seal(
                self.keyring, cmd.tenant_id, "SampleCompleted", out.sealed_result
            )
            return out.event_type, out.payload, False
        if t == "SaveState":
            blob = await asyncio.to_thread(session.trainer.save_state)
            m = session.trainer.dp_metrics()
            meta = {"client_id": cmd.client_id, "name": p["name"], "step": session.trainer.step}
            ref = await asyncio.to_thread(self.store.put, cmd.tenant_id, "checkpoint", blob, meta)
            self._access(ref, "put")
            return (
                "StateSaved",
                {
                    "artifact_id": ref.artifact_id,
                    "name": p["name"],
                    "content_sha256": ref.content_sha256,
                    "ciphertext_sha256": ref.ciphertext_sha256,
                    "size": ref.size,
                    "dek_id": ref.dek_id,
                    "include_optimizer": p["include_optimizer"],
                    "step": session.trainer.step,
                    "epsilon_spent": float(m.get("epsilon_spent") or 0.0),
                    "ledger_offset_hint": -1,
                },
                False,
            )
        if t == "CreatePackage":
            return await self._create_package(cmd, session, writer)
        if t == "LoadState":
            try:
                blob = await asyncio.to_thread(self.store.get, cmd.tenant_id, p["artifact_id"])
            except Exception as exc:
                raise CommandError(getattr(exc, "code", None) or "not_found", str(exc)) from exc
            await asyncio.to_thread(session.trainer.load_state, blob)
            info = await asyncio.to_thread(self.store.info, cmd.tenant_id, p["artifact_id"])
            self._access(info, "get")
            return (
                "StateLoaded",
                {
                    "artifact_id": p["artifact_id"],
                    "content_sha256": info.content_sha256,
                    "step": session.trainer.step,
                },
                True,
            )
        raise CommandError("unknown_command", f"unknown command type {t}")

    async def _create_package(self, cmd: Command, session, writer: LedgerWriter) -> tuple[str, dict, bool]:
        """A signed TSSP package of the client's adapter, with inclusion proofs of its
        creation and latest steps against a checkpoint signed now."""
        import tempfile

        from tensafe.crypto.kem import HybridKemPublicKey
        from tensafe.trainer.session import CommandError
        from tensafe.tssp.bridge import package_adapter

        p = cmd.payload
        if self.signer is None:
            raise CommandError("unavailable", "this trainer has no signing key for packages")
        if not session.trainer.config.enabled:
            raise CommandError(
                "invalid_state", "DP is off for this client: there is no privacy certificate to package"
            )
        try:
            recipients = [HybridKemPublicKey.from_bytes(b) for b in p["recipients"]]
        except ValueError as exc:
            raise CommandError("invalid_input", f"recipient key does not parse: {exc}") from exc
        if not recipients:
            raise CommandError("invalid_input", "at least one recipient key is required")
        checkpoint = await writer.checkpoint()
        events = self.client_events.get(cmd.client_id, [])
        chosen = events[:1] + events[1:][-max(0, p.get("max_proofs", 16) - 1) :]
        hashes = writer.state.hashes()
        with tempfile.TemporaryDirectory(prefix="tensafe-package-") as tmp:
            out = f"{tmp}/package.tssp"
            info = await asyncio.to_thread(
                package_adapter, session.trainer, out, model_ref=session.create["model_ref"],
                base_weights_sha256=session.create.get("base_model_sha256") or _base_model_digest(session.create["model_ref"]),
                tenant_id=cmd.tenant_id, client_id=cmd.client_id, ledger_id=writer.ledger_id, checkpoint=checkpoint,
                tree=writer.tree, chain_hashes=hashes, events=chosen, topic=self.topics.ledger, signer=self.signer,
                recipients=recipients,
            )  # fmt: skip
            data = await asyncio.to_thread(lambda: open(out, "rb").read())
        meta = {"client_id": cmd.client_id, "name": p["name"], "package_id": info.package_id}
        ref = await asyncio.to_thread(self.store.put, cmd.tenant_id, "package", data, meta)
        self._access(ref, "put")
        m = session.trainer.dp_metrics()
        return (
            "PackageCreated",
            {
                "package_id": info.package_id,
                "manifest_sha256": info.manifest_sha256,
                "signer_key_id": info.signer_key_id,
                "recipients": list(info.recipients),
                "epsilon": float(m.get("epsilon_spent") or 0.0),
                "delta": float(m.get("delta") or 0.0),
                "checkpoint_tree_size": checkpoint.tree_size,
                "artifact_id": ref.artifact_id,
                "name": p["name"],
                "size": len(data),
            },
            False,
        )

    def _tenant_key_command(self, cmd: Command) -> tuple[str, dict, bool]:
        """Key life-cycle operations, executed here so they land on the ledger in order."""
        t, tenant = cmd.command_type, cmd.tenant_id
        provider = type(self.keyring.provider).__name__
        if t == "CreateTenantKey":
            self.keyring.create_tenant(tenant)
            info = self.keyring.provider.get(tenant)
            return (
                "TenantKeyCreated",
                {"kek_id": f"{tenant}/v{info.current_version}", "provider": provider},
                False,
            )
        if t == "RotateTenantKey":
            old = self.keyring.provider.get(tenant).current_version
            new = self.keyring.rotate_kek(tenant)
            n = len(self.keyring.list_deks(tenant))
            return (
                "KeyRotated",
                {"old_kek_id": f"{tenant}/v{old}", "new_kek_id": f"{tenant}/v{new}", "deks_rewrapped": n},
                False,
            )
        # ShredTenant: afterwards nothing of the tenant decrypts; drop what this process holds in clear
        try:
            version = self.keyring.provider.get(tenant).current_version
            deks = len(self.keyring.list_deks(tenant))
        except Exception:  # already shredded (a re-run): still record the outcome
            version, deks = 0, 0
        self.keyring.shred_tenant(tenant)
        self.keyring.forget_cache()
        for client_id in [c for c, sess in self.sessions.items() if sess.tenant_id == tenant]:
            del self.sessions[client_id]
        self._dataset_texts_cache.clear()
        return (
            "TenantShredded",
            {
                "kek_id": f"{tenant}/v{version}",
                "deks_destroyed": deks,
                "reason": cmd.payload.get("reason", ""),
            },
            False,
        )

    # -- sessions and snapshots ------------------------------------------------------
    async def _session(self, writer: LedgerWriter, client_id: str):
        if client_id in self.sessions:
            return self.sessions[client_id]
        if client_id not in self.creates:
            return None
        tenant_id, create = self.creates[client_id]
        from tensafe.trainer.session import ClientSession

        async with self._compute:
            session = await asyncio.to_thread(
                ClientSession, client_id, tenant_id, create, test_mode=self.test_mode
            )
            snap = await asyncio.to_thread(self._load_snapshot, session)
        self.sessions[client_id] = session
        if snap is not None and snap["outcome"] is not None:
            event_type, payload, command_id = snap["outcome"]
            # the outcome may not have reached the ledger before a crash: append it (idempotent)
            await writer.append(
                event_type, payload, tenant_id=tenant_id, client_id=client_id, command_id=command_id
            )
        return session

    def _snapshot_path(self, client_id: str) -> Path:
        return self.state_dir / f"{client_id}.snap"

    def _snapshot(self, session, offset: int, cmd: Command, event_type: str, payload: dict) -> None:
        state = session.trainer.save_state()
        header = json.dumps(
            {
                "offset": offset,
                "outcome": [event_type, _jsonable(payload), cmd.command_id],
            }
        ).encode()
        clear = len(header).to_bytes(4, "big") + header + state
        blob = seal(
            self.keyring, session.tenant_id, "autosave/" + session.client_id, clear, purpose=SNAPSHOT_PURPOSE
        )
        path = self._snapshot_path(session.client_id)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
        session.snapshot_offset = offset

    def _load_snapshot(self, session) -> dict | None:
        path = self._snapshot_path(session.client_id)
        if not path.exists():
            return None
        clear = open_sealed(
            self.keyring, session.tenant_id, "autosave/" + session.client_id, path.read_bytes()
        )
        n = int.from_bytes(clear[:4], "big")
        header = json.loads(clear[4 : 4 + n])
        session.trainer.load_state(clear[4 + n :])
        session.snapshot_offset = header["offset"]
        event_type, payload, command_id = header["outcome"]
        return {"offset": header["offset"], "outcome": (event_type, _unjson(event_type, payload), command_id)}

    def _dataset_texts(self, tenant_id: str, session) -> list[str]:
        dataset_id = session.create.get("dataset_id")
        ds = self.datasets.get(dataset_id or "")
        if ds is None or ds[0] != tenant_id:
            from tensafe.trainer.session import CommandError

            raise CommandError("not_found", f"dataset {dataset_id!r} does not exist")
        if dataset_id not in self._dataset_texts_cache:
            self._dataset_texts_cache[dataset_id] = json.loads(self.store.get(tenant_id, ds[1]))
            self._access(self.store.info(tenant_id, ds[1]), "get")
        return self._dataset_texts_cache[dataset_id]

    def _access(self, ref, action: str) -> None:
        self._pending_access.append(
            {
                "artifact_id": ref.artifact_id,
                "action": action,
                "kind": ref.kind,
                "content_sha256": ref.content_sha256,
                "size": int(ref.size),
            }
        )

    def _dataset_records(self, cmd: Command) -> list:
        """Texts (TextRecords) or token rows (TokenBatch) of a RegisterDataset command."""
        clear = open_sealed(self.keyring, cmd.tenant_id, cmd.command_type, cmd.payload["records_ciphertext"])
        name, rec = codec.decode(clear)
        if name == "tensafe.data.TextRecords":
            return list(rec["texts"])
        if name == "tensafe.data.TokenBatch":
            labels = rec.get("labels") or []
            return [
                {"input_ids": ids, "labels": labels[i] if i < len(labels) else ids}
                for i, ids in enumerate(rec["input_ids"])
            ]
        from tensafe.trainer.session import CommandError

        raise CommandError("invalid_input", f"dataset records of type {name} are not supported")

    def _open(self, cmd: Command, field: str, schema: str) -> dict:
        clear = open_sealed(self.keyring, cmd.tenant_id, cmd.command_type, cmd.payload[field])
        return codec.decode_as(schema, clear)


PROVABLE_EVENTS = {"TrainingClientCreated", "OptimStepApplied", "TrainStepCompleted", "StateLoaded"}


_CREATED_FIELDS = (
    "model_ref", "base_model_sha256", "lora_rank", "lora_alpha", "target_modules", "dp_enabled", "noise_multiplier",
    "max_grad_norm", "target_epsilon", "target_delta", "accountant", "sampling_mode", "dataset_id", "dataset_size",
    "expected_batch_size", "seed", "metadata_json",
)  # fmt: skip


def _base_model_digest(model_ref: str) -> str:
    """The TSSP base-model digest (docs/TSSP_SPEC.md §6), recorded for provenance."""
    from tensafe.crypto.digest import model_weights_sha256
    from tensafe.trainer.models import resolve_model_ref

    try:
        return model_weights_sha256(resolve_model_ref(model_ref))
    except FileNotFoundError:
        return ""  # resolution fails again, with its precise message, when the session loads


def _sha256(data: bytes) -> bytes:
    import hashlib

    return hashlib.sha256(data).digest()


def _jsonable(payload: dict) -> dict:
    return {k: ({"__bytes__": v.hex()} if isinstance(v, bytes) else v) for k, v in payload.items()}


def _unjson(event_type: str, payload: dict) -> dict:
    return {
        k: (bytes.fromhex(v["__bytes__"]) if isinstance(v, dict) and "__bytes__" in v else v)
        for k, v in payload.items()
    }
