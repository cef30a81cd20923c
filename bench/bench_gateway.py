"""Gateway accept latency vs. a raw acks=all produce, at a fixed request rate.

python -m bench.bench_gateway [--quick]

Set-up: an embedded broker (or ``$TENSAFE_KAFKA_BOOTSTRAP``), the gateway served by
uvicorn in its own process (as deployed), and this process as the load generator.
Open loop: requests are *scheduled* at ``RATE`` per second whatever the answers
do, so a slow answer cannot hide the queueing it causes (no coordinated
omission); latency is measured from the scheduled send time to the 202.

Baseline, in the same run and interleaved in time with the gateway phases: an
aiokafka producer (``kafka_io.make_producer``, acks=all) sending records of the
same size as the gateway's commands to the same topic, at the same rate; latency
from send to broker ack. The ratio of the two p99s is what the gateway's work
(HTTP, auth cache, JSON + schema validation, sealing, Avro) costs on top of the
unavoidable durable write.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

RATE = float(os.environ.get("GATEWAY_BENCH_RATE", "200"))  # requests per second
BODY = {"batch": {"input_ids": [[(7 * i + j) % 8000 + 1 for j in range(64)] for i in range(4)]}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


class RawHTTP:
    """A minimal HTTP/1.1 keep-alive client (a pool of asyncio streams).

    Why not httpx: on 2 cores its ~2.5 ms of CPU per request would be the load
    generator measuring itself; this costs a fraction of that, so the numbers are
    the gateway's.
    """

    def __init__(self, host: str, port: int, headers: dict[str, str], size: int = 16) -> None:
        self.host, self.port, self.size = host, port, size
        self.base_headers = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        self.conns: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        for _ in range(self.size):
            r, w = await asyncio.open_connection(self.host, self.port)
            self.conns.append(w)
            self.pool.put_nowait((r, w))

    async def close(self) -> None:
        for w in self.conns:
            w.close()

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        r, w = await self.pool.get()
        try:
            head = (
                f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.base_headers}"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            w.write(head.encode() + body)
            status = int((await r.readline()).split(b" ", 2)[1])
            length = 0
            while True:
                line = await r.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            return status, await r.readexactly(length)
        finally:
            self.pool.put_nowait((r, w))


async def _open_loop(n: int, rate: float, one: Callable[[], Awaitable[None]]) -> tuple[list[float], int]:
    """Fire ``one`` ``n`` times at ``rate``/s; latency (ms) from each scheduled start."""
    loop = asyncio.get_running_loop()
    lat: list[float] = []
    errors = 0
    t0 = loop.time() + 0.05

    async def shot(at: float) -> None:
        nonlocal errors
        await asyncio.sleep(max(0.0, at - loop.time()))
        try:
            await one()
        except Exception:  # noqa: BLE001 - counted, reported
            errors += 1
            return
        lat.append((loop.time() - at) * 1000)

    await asyncio.gather(*(shot(t0 + i / rate) for i in range(n)))
    return lat, errors


async def _bench(quick: bool) -> dict[str, float]:
    import httpx
    from tensafe.crypto.keyring import Keyring
    from tensafe.events import kafka_io
    from tensafe.events.broker import EmbeddedBroker
    from tensafe.events.commands import partition_for
    from tensafe.events.topics import create_topics, ensure_topics, topic_names
    from tensafe.gateway.tenants import TenantStore

    seconds = 4.0 if quick else 15.0
    rounds = 2 if quick else 5
    per_phase = int(RATE * seconds / rounds)
    ext = os.environ.get("TENSAFE_KAFKA_BOOTSTRAP")
    broker = None
    if not ext:
        broker = EmbeddedBroker("memory")
        await broker.astart()
    bootstrap = ext or broker.bootstrap  # type: ignore[union-attr]
    tmp = Path(tempfile.mkdtemp(prefix="bench-gw-"))
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    partitions = 4
    await ensure_topics(bootstrap, partitions=partitions, topic_prefix=prefix)
    topics = topic_names(prefix)
    # the baseline writes to a topic of its own, shaped like tensafe.commands (nobody consumes it)
    baseline = prefix + "bench.baseline"
    await create_topics(bootstrap, {baseline: partitions})
    master = os.urandom(32).hex()
    keyring = Keyring.open_local(tmp / "keyring", master_key=master)
    _, key = TenantStore(tmp / "tenants.json").create_tenant("bench", keyring=keyring)
    port = _free_port()
    env = {**os.environ, "TS_KEY_MASTER": master, "PYTHONUNBUFFERED": "1"}
    log = open(tmp / "gateway.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [sys.executable, "-m", "tensafe.gateway.app", "--bootstrap", bootstrap, "--topic-prefix", prefix,
         "--partitions", str(partitions), "--keyring", str(tmp / "keyring"), "--tenants", str(tmp / "tenants.json"),
         "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    producer = kafka_io.make_producer(bootstrap, linger_ms=0)  # the gateway's producer settings
    try:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": key}, timeout=30) as http:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/healthz")).status_code == 200:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("gateway did not start: " + (tmp / "gateway.log").read_text()[-2000:])
                await asyncio.sleep(0.1)
            r = await http.post("/api/v1/training_clients", json={"model_ref": "tensafe-tiny-llama"})
            cid = r.json()["client_id"]
        raw = RawHTTP("127.0.0.1", port, {"X-API-Key": key})
        await raw.start()
        try:
            url = f"/api/v1/training_clients/{cid}/forward_backward"
            body = json.dumps(BODY).encode()

            async def gateway_one() -> None:
                status, text = await raw.request("POST", url, body)
                if status != 202:
                    raise RuntimeError(text[:300])

            # warm up: connections, auth cache (one Argon2 check), DEK, code paths
            await _open_loop(50, RATE, gateway_one)
            # a record of the same size as the gateway's commands
            part = partition_for(cid, partitions)  # the gateway's commands all go here
            size = 0
            async for rec in kafka_io.read_partition(bootstrap, topics.commands, part, 0):
                size = max(size, len(rec.value))
            await producer.start()
            payload = os.urandom(size)

            async def produce_one() -> None:
                fut = await producer.send(baseline, payload, key=cid.encode(), partition=part)
                await fut

            await _open_loop(50, RATE, produce_one)
            g_lat: list[float] = []
            p_lat: list[float] = []
            g_err = p_err = 0
            for _ in range(rounds):
                lat, err = await _open_loop(per_phase, RATE, produce_one)
                p_lat += lat
                p_err += err
                lat, err = await _open_loop(per_phase, RATE, gateway_one)
                g_lat += lat
                g_err += err
        finally:
            await raw.close()
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        if broker is not None:
            await broker.astop()
    g99, p99 = _pct(g_lat, 0.99), _pct(p_lat, 0.99)
    return {
        "gateway_p50_ms": round(_pct(g_lat, 0.50), 3),
        "gateway_p99_ms": round(g99, 3),
        "produce_p50_ms": round(_pct(p_lat, 0.50), 3),
        "produce_p99_ms": round(p99, 3),
        "gateway_vs_produce_p99_ratio": round(g99 / p99, 3) if p99 > 0 else float("nan"),
        "gateway_request_rate": RATE,
        "gateway_requests": float(len(g_lat)),
        "gateway_errors": float(g_err + p_err),
        "command_record_bytes": float(size),
    }


def run(quick: bool) -> dict[str, float]:
    return asyncio.run(_bench(quick))


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
