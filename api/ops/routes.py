"""GET /health, /livez, /readyz and POST /v1/apply_template (/metrics and /v1/models have their own modules)."""

from __future__ import annotations

from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromQuery, JSONBody

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

    @get("/readyz", summary="Readiness probe: this process can accept requests", include_in_schema=False)
    async def readyz(
        self, ops_service: NamedDependency[OpsService], fleet: FromQuery[bool] = False
    ) -> Response[dict[str, object]]:
        """200 when Redis and the blob store answer: requests are accepted (chat gets a quick 503
        while no worker is live; jobs and batches wait). `?fleet=true`: 200 only if the fleet can
        serve (a worker is ready), the same as /health's `ready`."""
        report = await ops_service.health()
        body: dict[str, object] = {
            "ready": report.accepting,
            "fleet_ready": report.ready,
            "redis": report.redis,
            "blob_store": report.blob_store,
            "workers_ready": len(report.devices),
        }
        ok = report.ready if fleet else report.accepting
        return Response(body, status_code=200 if ok else 503)


class TemplateController(Controller):
    path = "/v1/apply_template"
    tags = ["chat"]

    @post("", status_code=200, summary="Render the chat template (no generation)")
    async def apply(
        self, data: JSONBody[ApplyTemplateRequest], ops_service: NamedDependency[OpsService]
    ) -> ApplyTemplateResponse:
        return await ops_service.apply_template(data)
