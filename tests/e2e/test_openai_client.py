"""The official `openai` package, unmodified, against the server."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import STRICT_KEY
from tests.support.images import data_url, image_bytes
from tests.support.stack import Stack


@pytest.fixture
def client(strict_api: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{strict_api}/v1", api_key=STRICT_KEY, max_retries=0, timeout=60)


def test_chat_with_image_url_data_url(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model="model",
        max_tokens=12,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": data_url(image_bytes("JPEG"), "image/jpeg")}},
                    {"type": "text", "text": "Describe this image."},
                ],
            }
        ],
    )
    assert response.object == "chat.completion"
    assert isinstance(response.choices[0].message.content, str)
    assert response.choices[0].finish_reason in ("stop", "length")
    assert response.usage is not None and response.usage.prompt_tokens > 16
    assert response.model_extra is not None and response.model_extra["latency_seconds"] > 0


def test_models_list(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["model", "omega"]


def test_typed_exceptions(client: openai.OpenAI, strict_api: str) -> None:
    msgs = [{"role": "user", "content": "hi"}]
    bad_key = openai.OpenAI(base_url=f"{strict_api}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as auth:
        bad_key.chat.completions.create(model="model", messages=msgs)  # type: ignore[arg-type]
    assert auth.value.status_code == 401
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=msgs)  # type: ignore[arg-type]
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="model", messages=msgs, temperature=5)  # type: ignore[arg-type]
    assert bad.value.param == "temperature"


def test_open_server_needs_no_key(stack: Stack) -> None:
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="anything", max_retries=0)
    reply = client.chat.completions.create(model="omega", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert reply.model == "omega"


def test_models_retrieve(client: openai.OpenAI) -> None:
    listed = {m.id: m for m in client.models.list()}
    for name in ("model", "omega"):
        card = client.models.retrieve(name)
        assert (card.id, card.object, card.owned_by) == (name, "model", "omega-vlm")
        assert card.created == listed[name].created > 0


def test_models_retrieve_unknown_is_openai_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("no-such-model")
    assert missing.value.status_code == 404
    assert missing.value.body == {
        "message": "The model `no-such-model` does not exist",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


def test_models_retrieve_needs_the_key(strict_api: str) -> None:
    anonymous = openai.OpenAI(base_url=f"{strict_api}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.models.retrieve("model")


def test_models_retrieve_a_hub_style_name(stack: Stack) -> None:
    url = stack.start_api("hub-name", MODEL_NAME="omega-test/tiny-vlm")
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="anything", max_retries=0)
        assert client.models.retrieve("omega-test/tiny-vlm").id == "omega-test/tiny-vlm"
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("omega-test/other")
    finally:
        stack.stop_api("hub-name")
