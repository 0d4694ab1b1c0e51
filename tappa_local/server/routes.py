"""Routes of our own: model list, live KV stats, health, the web chat page.

None of them takes the model lock, so they answer while a reply is being generated.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from llama_cpp.server.app import authenticate

from .model import TappaLlamaProxy


def _proxy(request: Request) -> TappaLlamaProxy:
    return request.app.state.tappa_proxy  # type: ignore[no-any-return]


def webchat_html() -> str:
    return resources.files(__package__).joinpath("webchat", "index.html").read_text(encoding="utf-8")


def stats_payload(request: Request) -> dict[str, Any]:
    proxy = _proxy(request)
    queue = request.app.state.tappa_queue
    report = proxy.llm.latest_report()
    opts = proxy.options
    plan = proxy.handler.last_plan if proxy.handler is not None else None
    return {
        "object": "tappa.stats",
        "model": proxy.alias,
        "time": time.time(),
        "busy": queue.in_flight > 0,
        "in_flight": queue.in_flight,
        "max_queue": queue.max_queue,
        "configured": {"budget": opts.budget, "budget_mib": opts.budget_mib, "compress": opts.compress},
        "kv": report.as_dict(),
        # the last chat prompt: its length and how much of it the cache already held
        "last_chat_prompt": None if plan is None else {"tokens": len(plan.tokens), "reused": plan.reused},
    }


def build_router(webchat: bool) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/models", summary="Models", dependencies=[Depends(authenticate)], tags=["OpenAI V1"])
    async def models(request: Request) -> dict[str, Any]:
        proxy = _proxy(request)
        return {
            "object": "list",
            "data": [{"id": proxy.alias, "object": "model", "owned_by": "tappa-local", "permissions": []}],
        }

    @router.get("/v1/tappa/stats", summary="Live KV cache stats", dependencies=[Depends(authenticate)], tags=["tappa"])
    async def stats(request: Request) -> dict[str, Any]:
        return stats_payload(request)

    @router.get("/health", summary="Liveness", tags=["tappa"])
    async def health(request: Request) -> dict[str, Any]:
        return {"status": "ok", "model": _proxy(request).alias}

    if webchat:

        @router.get("/", response_class=HTMLResponse, include_in_schema=False)
        async def page() -> HTMLResponse:
            return HTMLResponse(webchat_html(), headers={"cache-control": "no-cache"})

    return router
