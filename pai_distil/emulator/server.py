"""The emulator's HTTP server: one FastAPI app on 127.0.0.1 serving every emulated PAI service.

Services are modules named in SERVICES, each exposing `router(emulator) -> APIRouter` (built on
`pop.pop_router()` for a POP API such as DLC, DSW or EAS) and optionally `start(emulator)` /
`stop(emulator)` for background work. Add a service by adding its module here, or pass extra
routers to `create_app`. OSS answers path-style requests (`/<bucket>/<key>`), so it is mounted
last, after every `/api/...` route.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from fastapi import APIRouter, FastAPI

from . import pop
from .auth import Keys, Nonces
from .state import Store

SERVICES = ["pai_distil.emulator.dlc", "pai_distil.emulator.ecs_specs", "pai_distil.emulator.dsw", "pai_distil.emulator.eas"]
OSS_SERVICE = "pai_distil.emulator.oss"
DEFAULT_PORT = 8790


@dataclass
class Emulator:
    """What every service shares: where state lives, which keys sign requests, where it listens."""

    data_dir: Path
    keys: Keys
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    executor: str = "auto"  # how DLC pods run: docker, process, or auto (Docker when the job's image is here)
    services: dict[str, Any] = field(default_factory=dict)  # module name -> module, once mounted
    nonces: Nonces = field(default_factory=Nonces)  # POP signature nonces already used

    def store(self, name: str) -> Store:
        return Store(self.data_dir / "state" / name)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


def create_app(emulator: Emulator, services: Iterable[str] = SERVICES,
               extra_routers: Iterable[APIRouter] = ()) -> FastAPI:
    emulator.data_dir.mkdir(parents=True, exist_ok=True)
    modules = [importlib.import_module(name) for name in [*services, OSS_SERVICE]]
    app = FastAPI(title="pai-distil emulator", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.emulator = emulator
    pop.install(app)
    for router in extra_routers:
        app.include_router(router)
    for module in modules:
        emulator.services[module.__name__] = module
        app.include_router(module.router(emulator))

    @app.on_event("startup")
    def _start() -> None:
        for module in modules:
            if hasattr(module, "start"):
                module.start(emulator)

    @app.on_event("shutdown")
    def _stop() -> None:
        for module in reversed(modules):
            if hasattr(module, "stop"):
                module.stop(emulator)

    return app


def serve(emulator: Emulator, services: Iterable[str] = SERVICES) -> None:
    import uvicorn

    # uvicorn's access log would print request lines only, but keep it off: query strings can carry tokens
    logging.getLogger("uvicorn.access").disabled = True
    uvicorn.run(create_app(emulator, services), host=emulator.host, port=emulator.port,
                log_level="warning", access_log=False)
