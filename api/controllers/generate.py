"""POST /generate: the seeds' simple generation (TGI's request and response shape)."""

from __future__ import annotations

import time
import uuid

from litestar import Controller, post
from litestar.di import Provide

from api.auth import require_api_key
from api.chat.convert import generate_params
from api.chat.protocol import GenerateDetails, GenerateRequest, GenerateResponse
from api.chat.request_log import log_success
from api.services import Services, get_services
from shared.contract import JobMeta, JobPayload


class GenerateController(Controller):
    path = "/generate"
    tags = ["generate"]
    guards = [require_api_key]
    dependencies = {"svc": Provide(get_services, sync_to_thread=False)}

    @post("", status_code=200, summary="Generate from a raw prompt (no chat template)")
    async def generate(self, data: GenerateRequest, svc: Services) -> GenerateResponse:
        started = time.perf_counter()
        params = generate_params(data.parameters, svc.settings)
        payload = JobPayload(
            id=uuid.uuid4().hex, kind="generate", prompt=data.inputs, params=params, created_at=time.time()
        )
        meta = JobMeta(model=svc.settings.model_name, created_at=payload.created_at)
        result = await svc.dispatcher.run(payload, meta)
        log_success("generate", payload.id, time.perf_counter() - started, svc.settings.model_name, result, params)
        text = data.inputs + result.text if data.parameters and data.parameters.return_full_text else result.text
        details = None
        if data.parameters and data.parameters.details:
            details = GenerateDetails(
                finish_reason=result.finish_reason,
                generated_tokens=result.completion_tokens,
                prompt_tokens=result.prompt_tokens,
                seed=result.seed,
            )
        return GenerateResponse(generated_text=text, details=details)
