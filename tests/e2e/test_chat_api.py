"""The synchronous OpenAI-compatible path over real HTTP: API -> S3 -> Redis/rq -> worker -> API."""

from __future__ import annotations

import httpx
import pytest

from tests.support.images import data_url, image_bytes
from tests.support.stack import Stack


def chat(client: httpx.Client, **body: object) -> httpx.Response:
    return client.post("/v1/chat/completions", json=body)


def assert_completion(body: dict, model: str = "model") -> None:
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == model
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] >= 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert body["latency_seconds"] > 0


def test_text_only_string_content(stack: Stack) -> None:
    with stack.client() as c:
        r = chat(c, messages=[{"role": "user", "content": "Hello, how are you?"}], max_tokens=16)
    assert r.status_code == 200, r.text
    assert_completion(r.json())


def test_seeds_image_part_with_base64(stack: Stack) -> None:
    img = data_url(image_bytes("JPEG"), "image/jpeg")
    with stack.client() as c:
        r = chat(
            c,
            model="omega",
            max_tokens=12,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": img},
                        {"type": "text", "text": "What objects are in this image?"},
                    ],
                }
            ],
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert_completion(body, model="omega")
    # 16 image placeholder tokens for the demo model's 32x32 vision tower, plus the text.
    assert body["usage"]["prompt_tokens"] > 16


def test_openai_image_url_part_string_and_object_forms(stack: Stack) -> None:
    img = data_url(image_bytes("PNG"))
    with stack.client() as c:
        for image_url in ({"url": img}, img, {"url": img, "detail": "low"}):
            r = chat(
                c,
                max_tokens=8,
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": image_url},
                            {"type": "text", "text": "Describe."},
                        ],
                    }
                ],
            )
            assert r.status_code == 200, r.text


def test_two_images_and_remote_url(stack: Stack, image_host) -> None:  # type: ignore[no-untyped-def]
    url = image_host.add("/photo.png", image_bytes("PNG", (80, 60), (0, 0, 255)))
    with stack.client() as c:
        one = chat(
            c,
            max_tokens=8,
            messages=[{"role": "user", "content": [{"type": "image", "image": url}, {"type": "text", "text": "x"}]}],
        )
        two = chat(
            c,
            max_tokens=8,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": url},
                        {"type": "image", "image": data_url(image_bytes("WEBP"), "image/webp")},
                        {"type": "text", "text": "Compare these two images."},
                    ],
                }
            ],
        )
    assert one.status_code == 200 and two.status_code == 200, (one.text, two.text)
    assert two.json()["usage"]["prompt_tokens"] >= one.json()["usage"]["prompt_tokens"] + 16


def test_advanced_parameters_and_system_and_multi_turn(stack: Stack) -> None:
    with stack.client() as c:
        r = chat(
            c,
            max_tokens=40,
            min_tokens=30,
            temperature=0.7,
            top_p=0.95,
            top_k=50,
            repetition_penalty=1.1,
            length_penalty=1.0,
            seed=42,
            stop=["END", "STOP"],
            presence_penalty=0.2,
            frequency_penalty=0.1,
            user="someone",
            extra_field_clients_send=True,
            messages=[
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Analyze."},
                {"role": "assistant", "content": "Sure."},
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Go on."}]},
            ],
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert_completion(body)
    # min_tokens holds back end-of-sequence: at least 30 tokens unless a stop string cut it.
    assert body["usage"]["completion_tokens"] >= 30 or body["choices"][0]["finish_reason"] == "stop"
    assert body["service"]["seed"] == 42


def test_max_tokens_is_respected_and_clamped(stack: Stack) -> None:
    with stack.client() as c:
        r = chat(c, max_tokens=5, min_tokens=5, messages=[{"role": "user", "content": "count"}])
        assert r.json()["usage"]["completion_tokens"] == 5
        assert r.json()["choices"][0]["finish_reason"] == "length"
        r = chat(c, max_completion_tokens=3, min_tokens=3, messages=[{"role": "user", "content": "count"}])
        assert r.json()["usage"]["completion_tokens"] == 3


def test_greedy_is_deterministic_and_seeded_sampling_reproducible(stack: Stack) -> None:
    msg = [{"role": "user", "content": "tell me about the picture"}]
    with stack.client() as c:
        greedy = {
            chat(c, messages=msg, temperature=0, max_tokens=20).json()["choices"][0]["message"]["content"]
            for _ in range(2)
        }
        seeded = {
            chat(c, messages=msg, seed=7, max_tokens=20).json()["choices"][0]["message"]["content"] for _ in range(2)
        }
    assert len(greedy) == 1 and len(seeded) == 1


def test_stop_string_is_cut_from_text(stack: Stack) -> None:
    msg = [{"role": "user", "content": "say something"}]
    with stack.client() as c:
        full = chat(c, messages=msg, temperature=0, max_tokens=30, min_tokens=30).json()
        text = full["choices"][0]["message"]["content"]
        stop = text[len(text) // 2 : len(text) // 2 + 3]
        cut = chat(c, messages=msg, temperature=0, max_tokens=30, min_tokens=30, stop=stop).json()
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert cut["choices"][0]["message"]["content"] == text[: text.find(stop)]


def test_generate_endpoint(stack: Stack) -> None:
    with stack.client() as c:
        r = c.post("/generate", json={"inputs": "Write a haiku about GPUs", "parameters": {"max_new_tokens": 12}})
        d = c.post(
            "/generate",
            json={"inputs": "Write", "parameters": {"max_new_tokens": 4, "min_new_tokens": 4, "details": True}},
        )
    assert r.status_code == 200 and isinstance(r.json()["generated_text"], str)
    assert d.json()["details"]["generated_tokens"] == 4


def test_apply_template_returns_the_worker_prompt(stack: Stack) -> None:
    with stack.client() as c:
        r = c.post(
            "/v1/apply_template",
            json={
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "image": data_url(image_bytes())},
                            {"type": "text", "text": "hello"},
                        ],
                    },
                ]
            },
        )
    assert r.status_code == 200, r.text
    assert r.json()["prompt"] == "<s>SYSTEM: Be brief.\nUSER: <image>\nhello\nASSISTANT:"


def test_models_and_health(stack: Stack) -> None:
    with stack.client() as c:
        models = c.get("/v1/models").json()
        health = c.get("/health").json()
    assert [m["id"] for m in models["data"]] == ["model", "omega"]
    for key in (
        "model_path",
        "devices",
        "device_names",
        "visible_cuda_devices",
        "queues",
        "ready",
        "startup_ok",
        "startup_error",
        "overloaded",
        "max_queue_size",
        "dtype",
        "attn",
        "batch",
        "vlm_config",
    ):
        assert key in health
    assert health["ready"] is True and health["demo_model"] is True and "meaningless" in health["note"]
    assert health["dtype"] == "torch.float32" and health["attn"] == "sdpa"
    assert health["model_path"] is None  # REDACT_SOURCE is on by default
    assert health["vlm_config"] == {
        "max_model_length": 8192,
        "max_image_size": 1024,
        "max_images_per_request": 10,
        "allow_remote_images": True,
    }
    assert len(health["queues"]) == 1 and health["workers"][0]["state"] == "ready"


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
def test_docs_are_served(stack: Stack, path: str) -> None:
    with stack.client() as c:
        r = c.get(path)
    assert r.status_code == 200
    if path == "/openapi.json":
        assert r.json()["info"]["title"] == "model - Docomentsio"
        assert "/v1/chat/completions" in r.json()["paths"]
