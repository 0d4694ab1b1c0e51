"""The FastAPI application: llama-cpp-python's OpenAI routes on a ``TappaLlama``.

Built from upstream's pieces rather than ``llama_cpp.server.app.create_app`` (which would
first load the model as a stock ``llama_cpp.Llama``): upstream's router, endpoint functions,
request types, model locks and server settings are used as they are; the differences are

* the model: :class:`~tappa_local.server.model.TappaLlamaProxy` (a ``LlamaProxy`` subclass)
  loads a ``TappaLlama`` with the continuation chat handler;
* the route class: :class:`~tappa_local.server.errors.TappaRouteErrorHandler` (4xx for bad
  requests, checked before queueing);
* a bounded queue (:mod:`tappa_local.server.gate`), ``interrupt_requests`` off,
  CORS only for the origins asked for, ``/v1/models`` and ``/v1/tappa/stats`` without the
  model lock, no ``/v1/embeddings``, and the web chat page at ``/``.
"""

from __future__ import annotations

from typing import Any

import llama_cpp.server.app as upstream
from fastapi import APIRouter, FastAPI
from fastapi.middleware import Middleware
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from llama_cpp.server.settings import ServerSettings
from starlette_context.middleware import RawContextMiddleware
from starlette_context.plugins import RequestIdPlugin

from .. import __version__
from .config import ServeConfig
from .errors import TappaRouteErrorHandler
from .gate import BusyGate, Queue
from .model import TappaLlamaProxy
from .routes import build_router

#: upstream routes we answer ourselves (see routes.py), or not at all: the model is not loaded
#: for embeddings (a compressed cache has nothing to offer there), so /v1/embeddings is a 404
OVERRIDDEN = frozenset({"/v1/models", "/v1/embeddings"})


def upstream_router() -> APIRouter:
    """Upstream's API routes, re-registered with our route class (same endpoints, same locks)."""
    router = APIRouter(route_class=TappaRouteErrorHandler)
    for route in upstream.router.routes:
        if not isinstance(route, APIRoute) or route.path in OVERRIDDEN:
            continue
        router.add_api_route(
            route.path,
            route.endpoint,
            methods=sorted(route.methods or ()),
            response_model=route.response_model,
            status_code=route.status_code,
            tags=list(route.tags or ()),
            dependencies=list(route.dependencies or ()),
            summary=route.summary,
            description=route.description,
            responses=dict(route.responses or {}),
            include_in_schema=route.include_in_schema,
            name=route.name,
        )
    return router


def create_app(config: ServeConfig, proxy: TappaLlamaProxy | None = None) -> FastAPI:
    """Load the model (unless ``proxy`` is given) and build the app; one app per process."""
    proxy = proxy or TappaLlamaProxy(config.model, config.model_alias)
    upstream.set_server_settings(
        ServerSettings(
            host=config.host,
            port=config.port,
            api_key=config.api_key,
            # upstream's default (True) lets a waiting request end a running stream by dropping
            # its connection mid-response; here a stream always runs to its end
            interrupt_requests=False,
            disable_ping_events=False,
            root_path="",
            ssl_keyfile=None,
            ssl_certfile=None,
        )
    )
    upstream._llama_proxy = proxy  # what upstream's get_llama_proxy() hands to its endpoints
    queue = Queue(config.max_queue)
    middleware: list[Any] = [Middleware(RawContextMiddleware, plugins=(RequestIdPlugin(),))]
    if config.allow_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(config.allow_origins),
                allow_credentials=False,
                allow_methods=["*"],
                allow_headers=["*"],
            )
        )
    middleware.append(Middleware(BusyGate, queue=queue))
    app = FastAPI(
        title="tappa-local",
        description="OpenAI-compatible API on a compressed KV cache (llama-cpp-python's server routes)",
        version=__version__,
        middleware=middleware,
    )
    app.state.tappa_proxy = proxy
    app.state.tappa_queue = queue
    app.state.tappa_config = config
    app.include_router(build_router(webchat=config.webchat))
    app.include_router(upstream_router())
    return app
