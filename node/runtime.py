"""The embedded single-machine node: one process, one event loop.

    data-dir/
      broker/          Tansu + SeaweedFS (durable) — the log survives restarts
      keys/            keyring (KEKs sealed by the node master key), node signing key
      artifacts/       encrypted artifact store (checkpoints, datasets)
      trainer-state/   encrypted per-client snapshots (crash recovery)
      tenants.json     tenants and Argon2id hashes of their API keys
      api_key          the default tenant's API key (mode 0600), printed path only
      node.json        bootstrap servers and gateway URL, for the CLI

The gateway, trainer worker and projector share nothing but the log (and, on one
machine, the keyring and artifact files): the same pieces run as separate
processes in the compose cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from tensafe.events.node_config import load_or_create_signing_key, write_node

log = logging.getLogger("tensafe.node")

PARTITIONS = 4
DEFAULT_TENANT = "default"


@dataclass
class NodeOptions:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    storage: str = "durable"  # or "memory"
    partitions: int = PARTITIONS
    bootstrap: str | None = None  # external Kafka instead of the embedded broker
    topic_prefix: str = ""
    test_mode: bool = False


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def master_key(keys_dir: Path) -> bytes:
    """TS_KEY_MASTER if set; else a generated master key kept in keys/master.key (0600).

    The file is the embedded node's convenience; production points the keyring at a
    passphrase, TS_KEY_MASTER from a secret store, or a KMS provider (docs/CRYPTO.md).
    """
    env = os.environ.get("TS_KEY_MASTER")
    if env:
        return env.encode()
    path = keys_dir / "master.key"
    if not path.exists():
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def open_keyring(data_dir: Path):
    from tensafe.crypto.keyring import Keyring

    keys = data_dir / "keys"
    return Keyring.open_local(keys / "keyring", master_key=master_key(keys))


def open_store(data_dir: Path, keyring):
    from tensafe.crypto.artifacts import ArtifactStore

    return ArtifactStore.local(keyring, str(data_dir / "artifacts"))


async def run_node(opts: NodeOptions, stop: asyncio.Event, started: asyncio.Event | None = None) -> None:
    import uvicorn
    from tensafe.events.broker import EmbeddedBroker, ExternalKafka, terminate_process
    from tensafe.events.topics import LEDGER, ensure_topics
    from tensafe.gateway.app import create_app
    from tensafe.gateway.settings import Settings
    from tensafe.gateway.tenants import TenantStore
    from tensafe.projections.projector import run_projector
    from tensafe.projections.readmodel import ReadModel

    data = opts.data_dir.resolve()
    data.mkdir(parents=True, exist_ok=True)
    if opts.bootstrap:
        node = ExternalKafka(opts.bootstrap)
    else:
        node = EmbeddedBroker(opts.storage, data / "broker" if opts.storage == "durable" else None)
    await asyncio.to_thread(node.start)
    tasks: list[asyncio.Task] = []
    trainer = None
    try:
        bootstrap = node.bootstrap
        await ensure_topics(bootstrap, partitions=opts.partitions, topic_prefix=opts.topic_prefix)
        keyring = await asyncio.to_thread(open_keyring, data)
        store = open_store(data, keyring)
        await asyncio.to_thread(load_or_create_signing_key, data)  # created once here; the trainer loads it

        tenants = TenantStore(data / "tenants.json")
        key_file = data / "api_key"
        if not key_file.exists():
            tenant_id, api_key = tenants.create_tenant(DEFAULT_TENANT, keyring=keyring)
            await _record_tenant_key(bootstrap, opts, tenant_id)
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(api_key + "\n")

        # The trainer runs as its own process, as in the cluster: its compute (Python-heavy
        # per-sample hooks) then never competes with the gateway's event loop for the GIL.
        trainer = await _start_trainer(bootstrap, opts, data)
        tasks.append(asyncio.create_task(_watch(trainer, stop), name="trainer"))

        readmodel = ReadModel(str(data / "readmodel.duckdb"))
        tasks.append(
            asyncio.create_task(
                run_projector(bootstrap, readmodel, stop, topic=opts.topic_prefix + LEDGER), name="projector"
            )
        )

        port = opts.port or _free_port(opts.host)
        settings = Settings(
            bootstrap=bootstrap,
            keyring=keyring,
            tenants_path=data / "tenants.json",
            topic_prefix=opts.topic_prefix,
            partitions=opts.partitions,
            models=_available_models(),
            extra={"artifact_store": store},  # package downloads
        )
        app = create_app(settings)
        server = uvicorn.Server(
            uvicorn.Config(app, host=opts.host, port=port, log_level="warning", lifespan="on")
        )
        server.install_signal_handlers = lambda: None  # the node owns signals
        tasks.append(asyncio.create_task(server.serve(), name="gateway"))
        while not server.started:
            if any(t.done() for t in tasks):
                break
            await asyncio.sleep(0.05)
        for t in tasks:
            if t.done() and t.exception():
                raise t.exception()
        url = f"http://{opts.host}:{port}"
        write_node(
            data,
            {
                "bootstrap": bootstrap,
                "gateway_url": url,
                "topic_prefix": opts.topic_prefix,
                "api_key_file": str(key_file),
                "pid": os.getpid(),
            },
        )
        print(f"TenSafe node up: {url}   (API key in {key_file}; data in {data})", flush=True)
        if started is not None:
            started.set()
        done_task = asyncio.create_task(stop.wait())
        finished, _ = await asyncio.wait([done_task, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for t in finished:
            if t is not done_task and t.exception():
                log.error("node component %s died: %s", t.get_name(), t.exception())
        stop.set()
        server.should_exit = True
        await asyncio.wait(tasks, timeout=30)
    finally:
        stop.set()
        for t in tasks:
            if not t.done():
                t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
        if trainer is not None:
            await asyncio.to_thread(terminate_process, trainer, 30)
        await asyncio.to_thread(node.stop)


def _available_models() -> tuple:
    """Every model the trainer can load here (shipped, then $TENSAFE_MODEL_DIR), with the
    limits the gateway validates against; read from config.json only."""
    from tensafe.gateway.settings import ModelSpec
    from tensafe.trainer.models import list_models, resolve_model_ref

    return tuple(ModelSpec.from_model_dir(ref, resolve_model_ref(ref)) for ref in list_models())


async def _start_trainer(bootstrap: str, opts: NodeOptions, data: Path):
    """``python -m tensafe.trainer`` for every partition; returns once it has claimed them."""
    from tensafe.events.broker import spawn_child, terminate_process

    ready = data / "trainer.ready"
    ready.unlink(missing_ok=True)
    argv = [
        sys.executable,
        "-m",
        "tensafe.trainer",
        "--bootstrap",
        bootstrap,
        "--data-dir",
        str(data),
        "--topic-prefix",
        opts.topic_prefix,
        "--ready-file",
        str(ready),
    ]
    if opts.test_mode:
        argv.append("--test-mode")
    proc = spawn_child(argv, env=dict(os.environ), cwd=Path.cwd(), log_path=data / "trainer.log")
    deadline = asyncio.get_running_loop().time() + 180
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"trainer exited ({proc.returncode}); see {data / 'trainer.log'}")
        if asyncio.get_running_loop().time() > deadline:
            terminate_process(proc, 10)
            raise RuntimeError(f"trainer did not claim its partitions in 180 s; see {data / 'trainer.log'}")
        await asyncio.sleep(0.1)
    return proc


async def _watch(proc, stop: asyncio.Event) -> None:
    """Ends (so the node stops) if the trainer process dies; it holds the ledger writers."""
    while not stop.is_set():
        if proc.poll() is not None:
            raise RuntimeError(f"trainer process exited with {proc.returncode}")
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass


async def _record_tenant_key(bootstrap: str, opts: NodeOptions, tenant_id: str) -> None:
    """Put the new tenant's key creation on the ledger (the trainer executes it)."""
    from tensafe.events import kafka_io
    from tensafe.events.commands import Command, publish_command
    from tensafe.events.topics import topic_names

    producer = kafka_io.make_producer(bootstrap)
    await producer.start()
    try:
        cmd = Command(
            f"cmd_{secrets.token_hex(16)}", "CreateTenantKey", tenant_id, "", {"requested_by": "tensafe up"}
        )
        await publish_command(producer, topic_names(opts.topic_prefix).commands, opts.partitions, cmd)
    finally:
        await producer.stop()


def serve_forever(opts: NodeOptions) -> int:
    logging.basicConfig(level=os.environ.get("TENSAFE_LOG", "WARNING"))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_node(opts, stop)

    asyncio.run(main())
    return 0
