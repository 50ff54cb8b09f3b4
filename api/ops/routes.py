"""GET /health, /livez, /readyz and POST /v1/apply_template (/metrics and /v1/models have their own modules)."""

from __future__ import annotations

from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from api.ops.protocol import ApplyTemplateRequest, ApplyTemplateResponse, HealthReport
from api.ops.service import OpsService


class HealthController(Controller):
    path = "/"
    tags = ["health"]

    @get("/health", summary="Service health (open even when API_KEY is set)")
    async def health(self, ops_service: NamedDependency[OpsService]) -> HealthReport:
        return await ops_service.health()

    @get("/livez", summary="Liveness probe: the API process answers", include_in_schema=False)
    async def livez(self) -> dict[str, bool]:
        return {"alive": True}

    @get("/readyz", summary="Readiness probe: Redis reachable and a worker ready", include_in_schema=False)
    async def readyz(self, ops_service: NamedDependency[OpsService]) -> Response[dict[str, object]]:
        report = await ops_service.health()
        body: dict[str, object] = {
            "ready": report.ready,
            "redis": report.redis,
            "blob_store": report.blob_store,
            "workers_ready": len(report.devices),
        }
        return Response(body, status_code=200 if report.ready else 503)


class TemplateController(Controller):
    path = "/v1/apply_template"
    tags = ["chat"]

    @post("", status_code=200, summary="Render the chat template (no generation)")
    async def apply(
        self, data: JSONBody[ApplyTemplateRequest], ops_service: NamedDependency[OpsService]
    ) -> ApplyTemplateResponse:
        return await ops_service.apply_template(data)
