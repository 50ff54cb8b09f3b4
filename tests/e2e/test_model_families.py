"""Real VLM families served by the whole service over HTTP: API -> S3 -> Redis/rq -> worker -> API."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.images import data_url, image_bytes
from tests.support.stack import Stack, StackFactory
from workers.tiny_models.build import ensure_family_model
from workers.tiny_models.families import FAMILIES

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {
        "role": "user",
        "content": [
            {"type": "image", "image": data_url(image_bytes("PNG", (64, 48), (200, 30, 30)))},
            {"type": "image", "image": data_url(image_bytes("PNG", (30, 90), (30, 200, 30)))},
            {"type": "text", "text": "What differs?"},
        ],
    },
]


@pytest.fixture(scope="module", params=["qwen2_5_vl", "idefics3"])
def family_stack(
    request: pytest.FixtureRequest, stacks: StackFactory, tmp_path_factory: pytest.TempPathFactory
) -> Stack:
    path = ensure_family_model(FAMILIES[request.param], tmp_path_factory.mktemp("families"))
    return stacks.get(f"family-{request.param}", workers=1, MODEL_PATH=str(path))


def test_a_family_model_folder_serves_chat_and_its_own_template(family_stack: Stack) -> None:
    from transformers import AutoProcessor

    with family_stack.client() as c:
        chat = c.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 8, "seed": 1})
        template = c.post("/v1/apply_template", json={"messages": MESSAGES})
    assert chat.status_code == 200, chat.text + family_stack.logs()
    assert chat.json()["usage"]["completion_tokens"] >= 1
    processor = AutoProcessor.from_pretrained(Path(family_stack.env["MODEL_PATH"]))
    typed = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "What differs?"}]},
    ]
    assert template.status_code == 200, template.text
    assert template.json()["prompt"] == processor.apply_chat_template(typed, add_generation_prompt=True, tokenize=False)
