"""The rules a validated request goes through before it becomes a job (pure): model names,
refusals, parameter defaults and clamps, image references, data URLs, the API key, and how
exceptions become OpenAI errors."""

from __future__ import annotations

import base64
from typing import Any

import msgspec
import pytest
from litestar.exceptions import HTTPException, ValidationException
from redis.exceptions import ConnectionError as RedisConnectionError

# --- the modules under test (move with the chat slice and api/errors.py) ----------------------
from api.auth import check_bearer
from api.chat.convert import (
    chat_params,
    check_model,
    generate_params,
    image_refs,
    job_messages,
    refuse_unsupported,
)
from api.chat.protocol import ChatCompletionRequest, GenerateParameters
from api.errors import to_service_error
from api.intake.images import ImageIntake, ImageRef, decode_data_url
from shared.contract import ImagePart, Message, TextPart
from shared.errors import InvalidRequest, ModelNotFound, PayloadTooLarge, ServiceError, Unauthorized
from shared.settings import Settings
from shared.settings_sources import load_settings

SETTINGS = load_settings(environ={"MAX_NEW_TOKENS_DEFAULT": "100"})


def request(**fields: Any) -> ChatCompletionRequest:
    return msgspec.convert({"messages": [{"role": "user", "content": "hi"}], **fields}, ChatCompletionRequest)


# --- model names and refusals -------------------------------------------------------------------
def test_model_names() -> None:
    assert check_model(None, SETTINGS) == "model" and check_model("", SETTINGS) == "model"
    assert check_model("omega", SETTINGS) == "omega"  # an alias answers with its own name
    with pytest.raises(ModelNotFound) as err:
        check_model("gpt-4o", SETTINGS)
    assert err.value.param == "model" and err.value.status_code == 404


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "logprobs"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_unsupported_options_are_refused(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        refuse_unsupported(request(**fields))
    assert err.value.param == param


def test_supported_values_of_those_options_pass() -> None:
    refuse_unsupported(
        request(
            n=1, stream=True, stream_options={"include_usage": True}, logprobs=False, response_format={"type": "text"}
        )
    )


# --- parameters ---------------------------------------------------------------------------------
def test_defaults_come_from_the_settings() -> None:
    params = chat_params(request(), SETTINGS)
    assert params.max_new_tokens == 100 and params.min_new_tokens == 1
    assert params.do_sample is SETTINGS.do_sample_default
    assert (params.temperature, params.top_p, params.top_k) == (
        SETTINGS.temperature_default,
        SETTINGS.top_p_default,
        SETTINGS.top_k_default,
    )
    assert params.seed == SETTINGS.seed_default and params.stop == ()


def test_max_tokens_is_clamped_and_max_completion_tokens_wins() -> None:
    assert chat_params(request(max_tokens=5000), SETTINGS).max_new_tokens == 100
    assert chat_params(request(max_tokens=7, max_completion_tokens=3), SETTINGS).max_new_tokens == 3


def test_min_tokens_above_the_clamped_max_is_refused() -> None:
    assert chat_params(request(max_tokens=5000, min_tokens=100), SETTINGS).min_new_tokens == 100
    with pytest.raises(InvalidRequest) as err:
        chat_params(request(max_tokens=5000, min_tokens=101), SETTINGS)
    assert err.value.param == "min_tokens"


def test_temperature_zero_is_greedy_and_top_k_minus_one_is_off() -> None:
    params = chat_params(request(temperature=0, top_k=-1, seed=9), SETTINGS)
    assert params.do_sample is False and params.top_k == 0 and params.seed == 9
    assert chat_params(request(temperature=0.5), SETTINGS).do_sample is True


def test_stop_strings() -> None:
    assert chat_params(request(stop="END"), SETTINGS).stop == ("END",)
    assert chat_params(request(stop=["a", "b", "a"]), SETTINGS).stop == ("a", "b")  # duplicates once
    with pytest.raises(InvalidRequest) as err:
        chat_params(request(stop=["a", ""]), SETTINGS)
    assert err.value.param == "stop"


def test_generate_parameters_are_greedy_unless_asked() -> None:
    assert generate_params(None, SETTINGS).do_sample is False
    params = generate_params(GenerateParameters(do_sample=True, max_new_tokens=500, stop=["x"]), SETTINGS)
    assert params.do_sample is True and params.max_new_tokens == 100 and params.stop == ("x",)
    with pytest.raises(InvalidRequest) as err:
        generate_params(GenerateParameters(max_new_tokens=3, min_new_tokens=4), SETTINGS)
    assert err.value.param == "parameters.min_new_tokens"
    with pytest.raises(InvalidRequest) as err:
        generate_params(GenerateParameters(stop=[""]), SETTINGS)
    assert err.value.param == "parameters.stop"


# --- messages and images ------------------------------------------------------------------------
MIXED = [
    {"role": "system", "content": "be brief"},
    {"role": "developer", "content": None},
    {
        "role": "user",
        "content": [
            {"type": "image", "image": "data:a"},
            {"type": "text", "text": "and"},
            {"type": "image_url", "image_url": "http://b"},
            {"type": "image_url", "image_url": {"url": "http://c", "detail": "low"}},
        ],
    },
]


def test_image_refs_name_their_place_in_the_request() -> None:
    refs = image_refs(request(messages=MIXED).messages)
    assert refs == [
        ImageRef("data:a", "messages[2].content[0].image"),
        ImageRef("http://b", "messages[2].content[2].image_url"),
        ImageRef("http://c", "messages[2].content[3].image_url"),
    ]


def test_job_messages_put_blob_digests_where_the_images_were() -> None:
    messages = job_messages(request(messages=MIXED).messages, ["d1", "d2", "d3"])
    assert messages == (
        Message("system", (TextPart("be brief"),)),
        Message("system", (TextPart(""),)),  # developer is the system role; no content is empty text
        Message("user", (ImagePart("d1"), TextPart("and"), ImagePart("d2"), ImagePart("d3"))),
    )


def data_ref(source: str) -> ImageRef:
    return ImageRef(source, "messages[0].content[0].image")


def test_data_urls() -> None:
    assert decode_data_url(data_ref("data:image/png;base64," + base64.b64encode(b"png!").decode()), 100) == b"png!"
    assert decode_data_url(data_ref("DATA:image/png;BASE64,cG5nIQ=="), 100) == b"png!"
    for source, code in [
        ("data:image/png;base64", "invalid_image_url"),  # no comma
        ("data:image/png,cG5nIQ==", "invalid_image_url"),  # not base64
        ("data:image/png;base64,cG5n!Q==", "invalid_base64"),
    ]:
        with pytest.raises(InvalidRequest) as err:
            decode_data_url(data_ref(source), 100)
        assert err.value.code == code and err.value.param == "messages[0].content[0].image"


def test_a_data_url_over_the_image_limit_is_refused_before_decoding() -> None:
    with pytest.raises(PayloadTooLarge):
        decode_data_url(data_ref("data:image/png;base64," + "A" * 2000), 1000)


def intake(**env: str) -> ImageIntake:
    settings: Settings = load_settings(environ=env)
    return ImageIntake(settings, store=None, fetcher=None)  # type: ignore[arg-type]


def test_cheap_image_checks_run_on_every_image_before_any_fetch() -> None:
    refs = [data_ref("data:x"), data_ref("https://example.com/a.png")]
    intake().check_refs(refs)
    with pytest.raises(InvalidRequest) as err:
        intake(MAX_IMAGES_PER_REQUEST="1").check_refs(refs)
    assert err.value.code == "too_many_images" and err.value.param == "messages"
    with pytest.raises(InvalidRequest) as err:
        intake(ALLOW_REMOTE_IMAGES="0").check_refs(refs)
    assert err.value.code == "remote_images_disabled"
    for source in ("ftp://x/a.png", "file:///etc/passwd", "/etc/passwd", "javascript:alert(1)"):
        with pytest.raises(InvalidRequest) as err:
            intake().check_refs([data_ref(source)])
        assert err.value.code == "invalid_image_url"


# --- the API key --------------------------------------------------------------------------------
def test_api_key() -> None:
    open_api, keyed = load_settings(environ={}), load_settings(environ={"API_KEY": "s3cret"})
    check_bearer(open_api, None)
    check_bearer(keyed, "Bearer s3cret")
    check_bearer(keyed, "bearer s3cret")  # the scheme is case-insensitive
    for header in (None, "", "Bearer", "Bearer ", "Basic s3cret", "Bearer wrong", "s3cret"):
        with pytest.raises(Unauthorized):
            check_bearer(keyed, header)


# --- exceptions as OpenAI errors ---------------------------------------------------------------
def validation(extra: Any) -> ValidationException:
    return ValidationException(detail="Validation failed", extra=extra)


@pytest.mark.parametrize(
    ("exc", "status", "param"),
    [
        (validation([{"key": "temperature", "message": "Expected `float` <= 2.0"}]), 400, "temperature"),
        (validation([{"key": "data", "message": "'data'"}]), 400, None),
        (validation([]), 400, None),
        (HTTPException(status_code=413, detail="too big"), 413, None),
        (HTTPException(status_code=400, detail="bad"), 400, None),
        (HTTPException(status_code=405, detail="no"), 405, None),
        (RedisConnectionError("down"), 503, None),
        (TimeoutError(), 503, None),
        (RuntimeError("at 0x7f secret /work/path"), 500, None),
    ],
)
def test_exceptions_become_openai_errors(exc: Exception, status: int, param: str | None) -> None:
    error = to_service_error(exc)
    assert isinstance(error, ServiceError) and error.status_code == status and error.param == param
    body = error.body()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["message"]
    assert "secret" not in (body["message"] or "")  # an unexpected exception's text never leaks


def test_service_errors_pass_through() -> None:
    original = InvalidRequest("x", param="p", code="c")
    assert to_service_error(original) is original
