"""The service's one error tree.

Each class fixes the HTTP status and the OpenAI error `type`; the API turns any of them into
`{"error": {"message", "type", "param", "code"}}` in one handler. Workers raise the same classes
for a job that cannot run (bad image, prompt too long), and the API re-raises them from the job's
stored error, so a client sees the same answer whichever side found the problem.
"""

from __future__ import annotations

from typing import ClassVar


class ServiceError(Exception):
    """Base of every error a client may see. The message must be safe to show to a client."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None
    # Seconds a client should wait before retrying; answered as a Retry-After header.
    default_retry_after_s: ClassVar[int | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        retry = retry_after_s if retry_after_s is not None else self.default_retry_after_s
        self.headers = {"Retry-After": str(max(1, retry))} if retry is not None else {}

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}


class InvalidRequest(ServiceError):
    status_code = 400
    error_type = "invalid_request_error"


class Unauthorized(ServiceError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class NotFound(ServiceError):
    status_code = 404
    error_type = "not_found_error"


class ModelNotFound(NotFound):
    """The seeds' model-name contract: OpenAI answers an unknown model with 404 model_not_found."""

    error_type = "invalid_request_error"
    default_code = "model_not_found"


class MethodNotAllowed(ServiceError):
    status_code = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class Conflict(ServiceError):
    status_code = 409
    error_type = "conflict_error"


class PayloadTooLarge(ServiceError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "payload_too_large"


class UnprocessableEntity(ServiceError):
    status_code = 422
    error_type = "invalid_request_error"


class Overloaded(ServiceError):
    """Every queue is full: shed load, tell the client when to come back."""

    status_code = 503
    error_type = "overloaded_error"
    default_code = "queue_full"
    default_retry_after_s = 1


class ServiceUnavailable(ServiceError):
    status_code = 503
    error_type = "service_unavailable_error"
    default_retry_after_s = 2


class BadGateway(ServiceError):
    """An upstream the service depends on for this request (e.g. an image host) failed: retryable."""

    status_code = 502
    error_type = "upstream_error"
    default_retry_after_s = 1


class GatewayTimeout(ServiceError):
    status_code = 504
    error_type = "timeout_error"
    default_code = "timeout"


class InternalError(ServiceError):
    status_code = 500
    error_type = "server_error"


_BY_STATUS: dict[int, type[ServiceError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    413: PayloadTooLarge,
    422: UnprocessableEntity,
    502: BadGateway,
    503: ServiceUnavailable,
    504: GatewayTimeout,
}


def error_from_fields(status: int, message: str, param: str | None, code: str | None) -> ServiceError:
    """Rebuild the error a worker stored for a job, so the API answers as the worker decided."""
    default = InvalidRequest if 400 <= status < 500 else InternalError
    return _BY_STATUS.get(status, default)(message, param=param, code=code)
