"""``create_app(settings)``: the Starlette application (serve it with uvicorn).

The lifespan starts the core service (topics, producer, read model rebuilt from
the log, followers) before the first request and stops it after the last.
A second API surface (the Tinker wire protocol) adds its routes to the same app
over the same ``GatewayService`` (see docs/GATEWAY.md).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute
from tensafe.gateway.errors import EXCEPTION_HANDLERS
from tensafe.gateway.http import RequestIdMiddleware
from tensafe.gateway.routes import RestApi
from tensafe.gateway.service import GatewayService
from tensafe.gateway.settings import Settings

log = logging.getLogger(__name__)

# A later surface plugs in as: def tinker_routes(service: GatewayService) -> list[BaseRoute]
RouteFactory = Callable[[GatewayService], Sequence[BaseRoute]]


def create_app(settings: Settings, *, extra_routes: Sequence[RouteFactory] = ()) -> Starlette:
    service = GatewayService(settings)
    rest = RestApi(service)
    routes: list[BaseRoute] = list(rest.routes())
    for factory in extra_routes:
        routes.extend(factory(service))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        if settings.tune_gc:
            # The read model just replayed from the log is long-lived: move it out of the
            # collector's way, and collect young objects less often (p99 latency).
            gc.collect()
            gc.freeze()
            gc.set_threshold(50_000, 20, 100)
        try:
            yield
        finally:
            await service.stop()

    app = Starlette(
        routes=routes,
        middleware=[Middleware(RequestIdMiddleware)],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        lifespan=lifespan,
    )
    app.state.service = service
    return app


def main(argv: list[str] | None = None) -> None:
    """``python -m tensafe.gateway.app --keyring DIR --tenants FILE --bootstrap HOST:PORT``."""
    import uvicorn
    from tensafe.crypto.keyring import Keyring

    ap = argparse.ArgumentParser(prog="tensafe-gateway")
    ap.add_argument("--bootstrap", default=os.environ.get("TENSAFE_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    ap.add_argument("--topic-prefix", default=os.environ.get("TENSAFE_TOPIC_PREFIX", ""))
    ap.add_argument("--partitions", type=int, default=int(os.environ.get("TENSAFE_PARTITIONS", "4")))
    ap.add_argument("--keyring", required=True, help="keyring directory (unlocked by TS_KEY_MASTER)")
    ap.add_argument("--tenants", default=os.environ.get("TENSAFE_TENANTS", "tenants.json"))
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    settings = Settings(
        bootstrap=args.bootstrap,
        keyring=Keyring.open_local(args.keyring),
        tenants_path=Path(args.tenants),
        topic_prefix=args.topic_prefix,
        partitions=args.partitions,
        tune_gc=True,
    )
    # no access log: a log line per request costs more than the rest of an accept
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info", access_log=False)


if __name__ == "__main__":
    main()
