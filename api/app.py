"""The Litestar application: the slices' controllers, the error handler, docs behind the API key.

Guards are set once, on the router of the guarded endpoints; the slices' services once, on the
application (see api/services.py). /health, probes and /metrics answer without the API key.

This module (and everything the API imports) must not import torch: the API image has none.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, RedocRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.routes import BaseRoute
from litestar.types import ControllerRouterHandler

from api.auth import require_api_key
from api.batches.routes import BatchesController
from api.chat.routes import ChatController, GenerateController
from api.errors import exception_handler
from api.files.routes import FilesController
from api.http_limits import BoundedJSONRequest
from api.jobs.routes import JobsController
from api.ops.metrics import MetricsController, prometheus_config
from api.ops.models import ModelsController
from api.ops.routes import HealthController, TemplateController
from api.services import SERVICE_DEPENDENCIES, services_lifespan
from shared.settings import Settings


@asynccontextmanager
async def _warm_template_renderer(app: Litestar) -> AsyncIterator[None]:
    # transformers' template module takes ~1 s to import; pay it at start, not in a request.
    import transformers.utils.chat_template_utils  # noqa: F401

    yield


class _DocsRouter(Router):
    """The router of /docs, /redoc and /openapi.json (the seeds' paths, hence at "/").

    Litestar adds a GET "/{path:str}" handler to the docs router that answers every other path one
    segment under it with an HTML "404 Not found" page, and so turns any other method there into a
    405. At "/" that would be every unknown top-level path (`GET /nope`: an HTML page; `POST /nope`:
    405); without it they raise the router's NotFoundException like any other unknown path, which
    the error handler answers with a 404 in OpenAI's error shape.
    """

    def register(self, value: ControllerRouterHandler) -> list[BaseRoute]:
        if isinstance(value, HTTPRouteHandler) and "/{path:str}" in value.paths:
            return []
        return super().register(value)


def _openapi(settings: Settings) -> OpenAPIConfig:
    guards = [require_api_key] if settings.auth_enabled else []
    return OpenAPIConfig(
        # The seeds' Swagger title.
        title=f"{settings.model_name} - Docomentsio",
        version="0.1.0",
        description="OpenAI-compatible vision-language model service (queue-backed).",
        path="/",
        render_plugins=[
            SwaggerRenderPlugin(path="/docs"),
            RedocRenderPlugin(path="/redoc"),
            JsonRenderPlugin(path="/openapi.json"),
        ],
        openapi_router=_DocsRouter(path="/", guards=guards, route_handlers=[], include_in_schema=False),
        components=Components(security_schemes={"BearerAuth": SecurityScheme(type="http", scheme="bearer")}),
        security=[{"BearerAuth": []}] if settings.auth_enabled else None,
    )


def _guarded(settings: Settings) -> Router:
    """Every endpoint that needs the API key (when API_KEY is set)."""
    return Router(
        path="/",
        guards=[require_api_key],
        route_handlers=[
            ChatController,
            GenerateController,
            TemplateController,
            ModelsController,
            JobsController,
            BatchesController,
            # Uploads have their own, larger, body limit.
            Router(path="/", route_handlers=[FilesController], request_max_body_size=settings.max_file_bytes),
        ],
    )


def create_app(settings: Settings) -> Litestar:
    return Litestar(
        route_handlers=[_guarded(settings), HealthController, MetricsController],
        dependencies=SERVICE_DEPENDENCIES,
        exception_handlers={Exception: exception_handler},
        middleware=[prometheus_config().middleware],
        lifespan=[services_lifespan, _warm_template_renderer],
        state=State({"settings": settings, "started_at": time.time()}),
        openapi_config=_openapi(settings),
        request_max_body_size=settings.max_request_bytes,
        request_class=BoundedJSONRequest,
        debug=False,  # never put tracebacks in responses, even with DEBUG=1 (they go to the log)
        logging_config=None,  # shared/logs.py configured logging: one format (LOG_FORMAT) for all
    )
