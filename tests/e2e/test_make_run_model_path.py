"""`MODEL_PATH=<a Qwen2.5-VL folder> make run`: the most deployed open VLM family served by the
whole service as a new user starts it (the folder is the matrix's tiny random-weight Qwen2.5-VL,
with its real processor class, chat template and M-RoPE configuration)."""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

from tests.e2e.test_make_run import curl, start_make_run
from tests.support.images import ImageHost, data_url, image_bytes
from workers.tiny_models.build import build_family_model
from workers.tiny_models.families import FAMILIES


def test_make_run_serves_a_qwen2_5_vl_folder(image_host: ImageHost) -> None:
    folder = build_family_model(FAMILIES["qwen2_5_vl"], Path(tempfile.mkdtemp(prefix="omega-qwen-")) / "qwen2.5-vl")
    url, proc, data = start_make_run(MODEL_PATH=str(folder), MODEL_NAME="qwen")
    try:
        image_url = image_host.add("/qwen.png", image_bytes("PNG", (200, 120)), headers={"Content-Type": "image/png"})
        inline = data_url(image_bytes("JPEG", (64, 96)), "image/jpeg")
        for content in (
            [{"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": "Describe it."}],
            [
                {"type": "image", "image": image_url},
                {"type": "image", "image": inline},
                {"type": "text", "text": "Compare."},
            ],
            "Hello, how are you?",
        ):
            body = {"model": "qwen", "messages": [{"role": "user", "content": content}], "max_tokens": 12, "seed": 1}
            status, reply = curl(url, "/v1/chat/completions", body)
            assert status == 200, reply
            assert reply["model"] == "qwen" and reply["usage"]["completion_tokens"] > 0
        status, template = curl(url, "/v1/apply_template", {"messages": [{"role": "user", "content": "hi"}]})
        assert status == 200 and "<|im_start|>user" in template["prompt"]  # Qwen's ChatML, not LLaVA's
        status, health = curl(url, "/health")
        assert status == 200 and health["ready"] and not health["demo_model"]
        assert not (data / "demo-model").exists()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
