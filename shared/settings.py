"""One frozen settings object per process.

Built once (see `shared.settings_sources.load_settings`) from built-in defaults < environment
variables < CLI flags, then passed down explicitly. Nothing in the project reads the environment
at import time. Field names are the seeds' environment names in lower case.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

PositiveInt = Annotated[int, Meta(ge=1)]
NonNegInt = Annotated[int, Meta(ge=0)]
PositiveFloat = Annotated[float, Meta(gt=0)]
NonNegFloat = Annotated[float, Meta(ge=0)]
Port = Annotated[int, Meta(ge=1, le=65535)]

Dtype = Literal["auto", "bf16", "fp16", "fp32"]
AttnImpl = Literal["flash_attention_2", "sdpa", "eager"]
LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]
BlobStoreKind = Literal["auto", "local", "s3"]

_SECRET_FIELDS = frozenset({"api_key", "hf_token", "s3_secret_access_key"})


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every tunable of the service. Defaults are documented in README's configuration reference."""

    # --- model -------------------------------------------------------------------------------
    model_path: str | None = None
    model_name: str = "model"
    # Extra names the model contract accepts besides MODEL_NAME (vLLM's multi served-model-name).
    # "omega" is accepted by default because the usage guide's examples send it.
    model_aliases: tuple[str, ...] = ("omega",)
    model_revision: str | None = None
    trust_remote_code: bool = True
    hf_token: str | None = None
    cache_dir: str | None = None
    transformers_path: str | None = None

    # --- compute / kernels -------------------------------------------------------------------
    dtype: Dtype = "auto"
    attn_impl: AttnImpl = "flash_attention_2"
    attn_strict: bool = False
    # Static KV cache + torch.compile (CUDA graphs) for decoding. auto: on for GPU workers, with
    # a fallback to the eager path if it fails at warm-up.
    torch_compile: Literal["auto", "on", "off"] = "auto"

    # --- batching / limits / backpressure ----------------------------------------------------
    max_batch_size: Annotated[int, Meta(ge=1, le=1024)] = 8
    batch_timeout_ms: Annotated[float, Meta(ge=0, le=10_000)] = 0.0
    max_queue_size: PositiveInt = 256
    max_input_tokens: PositiveInt = 16384
    max_model_length: Annotated[int, Meta(ge=2)] = 8192
    max_new_tokens_default: PositiveInt = 512
    # Per generate call: rows x (prompt + new tokens), the KV cache's size; and decoded image
    # pixels. A pulled batch over either is split. 0 = no limit.
    max_batch_tokens: NonNegInt = 0
    max_batch_pixels: NonNegInt = 0
    request_timeout_s: PositiveFloat = 300.0

    # --- generation defaults -----------------------------------------------------------------
    do_sample_default: bool = True
    temperature_default: Annotated[float, Meta(ge=0, le=2)] = 0.8
    top_p_default: Annotated[float, Meta(ge=0, le=1)] = 0.9
    top_k_default: Annotated[int, Meta(ge=0)] = 50
    repetition_penalty_default: Annotated[float, Meta(gt=0, le=2)] = 1.0
    seed_default: NonNegInt = 42

    # --- devices -----------------------------------------------------------------------------
    gpu_count: NonNegInt | None = None
    gpu_ids: tuple[NonNegInt, ...] | None = None
    cpu_workers: Annotated[int, Meta(ge=1, le=64)] = 1

    # --- server / logging --------------------------------------------------------------------
    host: str = "0.0.0.0"
    port: Port = 8000
    # Unset: info, or debug when DEBUG is on (the seeds: DEBUG bumps the level unless it was set).
    log_level: LogLevel | None = None
    progress_logs: bool = False
    fast_usage: bool = True
    redact_source: bool = True
    debug: bool = False
    uvicorn_workers: Annotated[int, Meta(ge=1, le=64)] = 1
    api_key: str | None = None
    max_request_bytes: PositiveInt = 32 * 1024 * 1024

    # --- images ------------------------------------------------------------------------------
    max_image_size: Annotated[int, Meta(ge=16, le=16384)] = 1024
    max_images_per_request: NonNegInt = 10
    image_cache_size: NonNegInt = 256
    allow_remote_images: bool = True
    max_image_pixels: PositiveInt = 40_000_000
    max_image_bytes: PositiveInt = 20 * 1024 * 1024
    image_fetch_timeout_s: PositiveFloat = 10.0
    image_fetch_max_redirects: NonNegInt = 5
    # CIDRs that remote image URLs may resolve into although not global. Empty by default; the
    # test suite uses it to serve images from a loopback address.
    image_fetch_allow_networks: tuple[str, ...] = ()

    # --- storage and queues ------------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    data_dir: str = ".omega"
    blob_store: BlobStoreKind = "auto"
    blob_dir: str | None = None
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_prefix: str = "blobs/"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    result_ttl_s: PositiveInt = 3600
    # Submit-and-poll jobs and batch items: how long results stay retrievable (then 404).
    job_result_ttl_s: PositiveInt = 86400
    job_wait_max_s: Annotated[float, Meta(ge=0, le=3600)] = 60.0
    cancel_wait_s: Annotated[float, Meta(ge=0, le=600)] = 5.0
    # Batch-priority jobs waiting on one worker queue at most: interactive requests never wait
    # behind more than this much batch work. 0 = twice the worker's batch capacity.
    batch_queue_depth: NonNegInt = 0
    max_file_bytes: PositiveInt = 200 * 1024 * 1024
    max_batch_lines: PositiveInt = 50_000
    # Batch lines turned into queued jobs ahead of the ones finishing (bounds memory and Redis).
    batch_expand_ahead: PositiveInt = 256
    # Fault tolerance: how often the janitor sweeps, and how many runs that killed their worker a
    # job gets before it fails as a poison request.
    janitor_interval_s: Annotated[float, Meta(gt=0, le=600)] = 1.0
    # How long `up`/`worker` give a worker to finish its batch after SIGTERM before killing it
    # (keep it under Kubernetes' terminationGracePeriodSeconds).
    worker_stop_grace_s: Annotated[float, Meta(gt=0, le=3600)] = 150.0
    max_job_attempts: Annotated[int, Meta(ge=1, le=100)] = 3
    # Testing only: a worker SIGKILLs itself on a job whose text contains this marker (empty = off).
    fault_kill_marker: str = ""
    worker_heartbeat_s: PositiveFloat = 2.0
    worker_ttl_s: PositiveFloat = 10.0

    # --- hardening (issue 12): fetch fairness, image shape, start-up, logs -------------------
    # Connections of the remote-image fetch pool; the share of it batch lines may hold at once;
    # how many images of one request (or batch line) are fetched at once.
    image_fetch_pool_size: PositiveInt = 64
    image_fetch_batch_share: Annotated[float, Meta(gt=0, le=1)] = 0.5
    image_fetch_per_request: PositiveInt = 4
    # Longest side over shortest side of one image (Qwen2-VL's resizer refuses over 200), and the
    # pixels of all images of one request together (0 = no limit).
    max_image_aspect_ratio: Annotated[float, Meta(ge=1)] = 200.0
    max_request_pixels: NonNegInt = 100_000_000
    # Consecutive failed starts after which `up`/`worker` stop restarting a worker.
    worker_max_restarts: NonNegInt = 5
    log_format: Literal["text", "json"] = "text"
    access_log: bool = False

    def __repr__(self) -> str:
        parts = []
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if name in _SECRET_FIELDS and value:
                value = "***"
            parts.append(f"{name}={value!r}")
        return f"Settings({', '.join(parts)})"

    # --- derived values (computed, never stored twice) ---------------------------------------
    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_key)

    @property
    def effective_log_level(self) -> LogLevel:
        if self.log_level is not None:
            return self.log_level
        return "debug" if self.debug else "info"

    @property
    def served_model_names(self) -> tuple[str, ...]:
        """The display name first, then the accepted aliases, without duplicates."""
        names = [self.model_name, *self.model_aliases]
        return tuple(dict.fromkeys(n for n in names if n))

    @property
    def input_token_limit(self) -> int:
        """Prompt tokens the worker keeps: MAX_INPUT_TOKENS, leaving room for one new token."""
        return min(self.max_input_tokens, self.max_model_length - 1)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def demo_model_dir(self) -> Path:
        return self.data_path / "demo-model"

    @property
    def uses_demo_model(self) -> bool:
        return self.model_path is None

    @property
    def resolved_model_path(self) -> str:
        return self.model_path if self.model_path is not None else str(self.demo_model_dir)

    @property
    def blob_store_kind(self) -> Literal["local", "s3"]:
        if self.blob_store != "auto":
            return self.blob_store
        return "s3" if self.s3_bucket else "local"

    @property
    def local_blob_dir(self) -> Path:
        return Path(self.blob_dir).expanduser() if self.blob_dir else self.data_path / "blobs"
