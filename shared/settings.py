"""One frozen settings object per process.

Built once (see `shared.settings_sources.load_settings`) from built-in defaults < environment
variables < CLI flags, then passed down explicitly. Nothing in the project reads the environment
at import time. Field names are the seeds' environment names in lower case.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class Opt:
    """How a setting is spelled outside the code, declared once on its field (the option table,
    the CLI flags and the README check all derive from it)."""

    help: str
    # Environment names, first one documented; a single name may be given as a str. Default: the
    # field name in upper case (the seeds' spelling).
    env: str | tuple[str, ...] = ()
    # CLI flags, first one documented; None: no flag (secrets, test hooks). Default: --field-name.
    flags: str | tuple[str, ...] | None = ()

    def envs_for(self, field: str) -> tuple[str, ...]:
        return (self.env,) if isinstance(self.env, str) else self.env or (field.upper(),)

    def flags_for(self, field: str) -> tuple[str, ...]:
        if self.flags is None:
            return ()
        return (self.flags,) if isinstance(self.flags, str) else self.flags or ("--" + field.replace("_", "-"),)


_SECRET_FIELDS = frozenset(
    {"api_key", "hf_token", "s3_secret_access_key", "redis_password", "redis_sentinel_password"}
)


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every tunable of the service. Defaults are documented in README's configuration reference."""

    # --- model -------------------------------------------------------------------------------
    model_path: Annotated[
        str | None,
        Opt(
            "Local model folder or Hugging Face repo id (org/name); unset = the generated demo model",
            env=("MODEL_PATH", "MODEL_ID"),
            flags=("--model-path", "--model-id"),
        ),
    ] = None
    model_name: Annotated[str, Opt("Display model name; requests must use it")] = "model"
    # Extra names the model contract accepts besides MODEL_NAME (vLLM's multi served-model-name).
    # "omega" is accepted by default because the usage guide's examples send it.
    model_aliases: Annotated[tuple[str, ...], Opt("Comma-separated extra names the model contract accepts")] = (
        "omega",
    )
    model_revision: Annotated[str | None, Opt("Hub branch/tag/commit to pin")] = None
    trust_remote_code: Annotated[bool, Opt("Allow custom model code")] = True
    hf_token: Annotated[
        str | None, Opt("Token for private or gated hub models", env=("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"), flags=None)
    ] = None
    cache_dir: Annotated[str | None, Opt("Hugging Face hub cache folder (sets HF_HUB_CACHE)")] = None
    transformers_path: Annotated[
        str | None,
        Opt(
            "pip-install this transformers (path, URL or wheel) before a worker starts", env="TRANSFORMERS_INSTALL_PATH"
        ),
    ] = None

    # --- compute / kernels -------------------------------------------------------------------
    dtype: Annotated[Dtype, Opt("auto | bf16 | fp16 | fp32 (auto: bf16 on GPU, fp32 on CPU)")] = "auto"
    attn_impl: Annotated[AttnImpl, Opt("flash_attention_2 | sdpa | eager")] = "flash_attention_2"
    attn_strict: Annotated[bool, Opt("Fail start-up instead of falling back")] = False
    # Static KV cache + torch.compile (CUDA graphs) for decoding. auto: on for GPU workers, with
    # a fallback to the eager path if it fails at warm-up.
    torch_compile: Annotated[
        Literal["auto", "on", "off"],
        Opt("auto | on | off: static KV cache + torch.compile for decoding (auto: on for GPU)"),
    ] = "auto"

    # --- batching / limits / backpressure ----------------------------------------------------
    # Continuous engine: slots of the running batch. 32 because a decoding step costs about the same
    # for 8 rows as for 32 on a GPU (memory-bound), and on the CPU's demo too it was what let 16
    # clients' requests join at once (BENCHMARKS.md, the peer section); device memory is still kept
    # by MAX_BATCH_TOKENS and, past it, by the engine's out-of-memory shrink. Static engine: requests
    # per generate call (its A/B in BENCHMARKS.md runs 8).
    max_batch_size: Annotated[
        Annotated[int, Meta(ge=1, le=1024)],
        Opt("Rows decoding at once (continuous), requests per micro-batch (static)"),
    ] = 32
    batch_timeout_ms: Annotated[Annotated[float, Meta(ge=0, le=10_000)], Opt("Micro-batch collection window")] = 0.0
    max_queue_size: Annotated[PositiveInt, Opt("Waiting jobs per worker before 503")] = 256
    max_input_tokens: Annotated[
        PositiveInt,
        Opt(
            "Prompt tokens kept (left-truncated)",
            env=("MAX_INPUT_TOKENS", "MAX_CONTEXT_TOKENS"),
            flags=("--max-input-tokens", "--max-context-tokens"),
        ),
    ] = 16384
    max_model_length: Annotated[Annotated[int, Meta(ge=2)], Opt("Prompt + new tokens per row")] = 8192
    max_new_tokens_default: Annotated[
        PositiveInt, Opt("Default and cap for max_tokens", flags="--default-max-tokens")
    ] = 512
    # Per generate call: rows x (prompt + new tokens), the KV cache's size; and decoded image
    # pixels. A pulled batch over either is split. 0 = no limit.
    max_batch_tokens: Annotated[
        NonNegInt, Opt("Per generate call: rows x (prompt + new tokens) at most (0 = no limit)")
    ] = 0
    # continuous: rows join and leave the running batch at every decoding step (workers/continuous);
    # static: one generate call per micro-batch, kept for A/B benchmarks.
    engine: Annotated[
        Literal["static", "continuous"],
        Opt("static | continuous: a generate call per micro-batch, or rows joining at every step"),
    ] = "continuous"
    max_batch_pixels: Annotated[NonNegInt, Opt("Per generate call: image pixels at most (0 = no limit)")] = 0
    request_timeout_s: Annotated[PositiveFloat, Opt("Synchronous wait before 504")] = 300.0

    # --- generation defaults -----------------------------------------------------------------
    do_sample_default: Annotated[bool, Opt("Sample by default (else greedy)", flags="--default-sampling")] = True
    temperature_default: Annotated[
        Annotated[float, Meta(ge=0, le=2)], Opt("Default temperature", flags="--default-temperature")
    ] = 0.8
    top_p_default: Annotated[Annotated[float, Meta(ge=0, le=1)], Opt("Default nucleus p", flags="--default-top-p")] = (
        0.9
    )
    top_k_default: Annotated[Annotated[int, Meta(ge=0)], Opt("Default top-k (0 = off)", flags="--default-top-k")] = 50
    repetition_penalty_default: Annotated[
        Annotated[float, Meta(gt=0, le=2)], Opt("Default repetition penalty", flags="--default-repetition-penalty")
    ] = 1.0
    seed_default: Annotated[NonNegInt, Opt("Default sampling seed", flags="--default-seed")] = 42

    # --- devices -----------------------------------------------------------------------------
    gpu_count: Annotated[NonNegInt | None, Opt("Use the first N visible GPUs")] = None
    gpu_ids: Annotated[tuple[NonNegInt, ...] | None, Opt("Comma-separated CUDA indices (overrides GPU_COUNT)")] = None
    cpu_workers: Annotated[Annotated[int, Meta(ge=1, le=64)], Opt("Worker processes when no GPU is visible")] = 1

    # --- server / logging --------------------------------------------------------------------
    host: Annotated[str, Opt("Bind address")] = "0.0.0.0"
    port: Annotated[Port, Opt("HTTP port")] = 8000
    # Unset: info, or debug when DEBUG is on (the seeds: DEBUG bumps the level unless it was set).
    log_level: Annotated[LogLevel | None, Opt("critical | error | warning | info | debug | trace")] = None
    progress_logs: Annotated[bool, Opt("Start-up heartbeat and per-request lines", flags="--progress")] = False
    fast_usage: Annotated[bool, Opt("Usage from the worker's token ids")] = True
    redact_source: Annotated[bool, Opt("Hide model path in logs and /health")] = True
    debug: Annotated[bool, Opt("Debug logging with tracebacks")] = False
    uvicorn_workers: Annotated[Annotated[int, Meta(ge=1, le=64)], Opt("API processes (the API holds no model)")] = 1
    api_key: Annotated[str | None, Opt("Bearer key for /v1/*, /generate and the docs")] = None
    max_request_bytes: Annotated[PositiveInt, Opt("Largest request body (413)")] = 32 * 1024 * 1024
    # --- request shape, prompt size and slow clients (issue 12, items 4, 5, 8) ---------------
    # A JSON body's values are counted (cheaply, an overestimate: `{`, `[` and `,` bytes) before it
    # is decoded: decoding holds the GIL, so a body of a million tiny values would stall the loop
    # even in a thread. Messages and parts are OpenAI's bound (2048 messages).
    max_json_items: Annotated[PositiveInt, Opt("JSON values in one request body, counted before decoding (400)")] = (
        65_536
    )
    max_messages: Annotated[PositiveInt, Opt("Messages in one chat request (400)")] = 2048
    max_content_parts: Annotated[PositiveInt, Opt("Content parts of all messages of one request (400)")] = 4096
    # Prompt text past this many characters is refused (400 context_length_exceeded) by the API
    # and by the worker before rendering; below it, prompts are left-truncated to MAX_INPUT_TOKENS.
    max_input_chars: Annotated[
        NonNegInt, Opt("Prompt text characters per request (400); 0 = 16 x the prompt token limit, at least 65536")
    ] = 0
    header_timeout_s: Annotated[PositiveFloat, Opt("Seconds a client has to send a request's headers")] = 10.0
    keep_alive_timeout_s: Annotated[PositiveFloat, Opt("Idle seconds before a keep-alive connection is closed")] = 5.0
    max_connections: Annotated[
        NonNegInt, Opt("Open connections + requests in progress per API process before 503 (0 = no limit)")
    ] = 1024

    # --- images ------------------------------------------------------------------------------
    max_image_size: Annotated[Annotated[int, Meta(ge=16, le=16384)], Opt("Longest image side after resize")] = 1024
    max_images_per_request: Annotated[NonNegInt, Opt("Images per request")] = 10
    image_cache_size: Annotated[NonNegInt, Opt("Decoded images a worker keeps")] = 256
    image_reduced_decode: Annotated[
        bool, Opt("Decode JPEGs at the smallest scale the model's image processor needs (false: full decode)")
    ] = True
    allow_remote_images: Annotated[bool, Opt("Fetch http(s) image URLs")] = True
    max_image_pixels: Annotated[PositiveInt, Opt("Pixel cap (width x height)")] = 40_000_000
    max_image_bytes: Annotated[PositiveInt, Opt("Encoded bytes per image")] = 20 * 1024 * 1024
    image_fetch_timeout_s: Annotated[PositiveFloat, Opt("Total deadline per remote image")] = 10.0
    image_fetch_max_redirects: Annotated[NonNegInt, Opt("Redirects followed per remote image")] = 5
    # CIDRs that remote image URLs may resolve into although not global. Empty by default; the
    # test suite uses it to serve images from a loopback address.
    image_fetch_allow_networks: Annotated[
        tuple[str, ...], Opt("Comma-separated non-global CIDRs remote images may come from (tests only)")
    ] = ()

    # --- storage and queues ------------------------------------------------------------------
    redis_url: Annotated[str, Opt("Redis for queues and results")] = "redis://127.0.0.1:6379/0"
    # Redis high availability (issue 13): with REDIS_SENTINELS set, every process asks the
    # sentinels for the current primary of REDIS_SENTINEL_MASTER and follows a failover; REDIS_URL
    # then names only the database (and, if REDIS_PASSWORD is unset, the data nodes' password).
    redis_sentinels: Annotated[
        str, Opt("Comma-separated Sentinel host:port list (unset: REDIS_URL's host is the Redis)")
    ] = ""
    redis_sentinel_master: Annotated[str, Opt("Sentinel's name of the Redis primary")] = "mymaster"
    redis_sentinel_password: Annotated[str | None, Opt("Password of the sentinels", flags=None)] = None
    redis_password: Annotated[
        str | None, Opt("Password of the Redis data nodes (overrides REDIS_URL's)", flags=None)
    ] = None
    # A job is acknowledged only once this many replicas hold it (Redis WAIT); auto: 1 with
    # sentinels, else 0. Fewer within the timeout: 503 + Retry-After.
    redis_wait_replicas: Annotated[
        Literal["auto"] | NonNegInt,
        Opt("Replicas that must hold a job before it is acknowledged (auto: 1 with sentinels)"),
    ] = "auto"
    redis_wait_timeout_ms: Annotated[PositiveInt, Opt("How long a submission waits for its replicas")] = 1000
    data_dir: Annotated[str, Opt("Demo model, local blobs and private Redis data")] = ".omega"
    blob_store: Annotated[BlobStoreKind, Opt("auto | local | s3 (auto: s3 when S3_BUCKET is set)")] = "auto"
    blob_dir: Annotated[str | None, Opt("Local blob folder (default DATA_DIR/blobs)")] = None
    s3_bucket: Annotated[str | None, Opt("S3 bucket for image blobs")] = None
    s3_endpoint_url: Annotated[str | None, Opt("S3-compatible endpoint (MinIO, Ceph)")] = None
    s3_region: Annotated[str | None, Opt("S3 region", env=("S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"))] = None
    s3_prefix: Annotated[str, Opt("Key prefix inside the bucket")] = "blobs/"
    s3_access_key_id: Annotated[
        str | None, Opt("S3 access key", env=("S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"), flags=None)
    ] = None
    s3_secret_access_key: Annotated[
        str | None, Opt("S3 secret key", env=("S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"), flags=None)
    ] = None
    result_ttl_s: Annotated[PositiveInt, Opt("Seconds synchronous results are kept in Redis")] = 3600
    # Submit-and-poll jobs and batch items: how long results stay retrievable (then 404).
    job_result_ttl_s: Annotated[PositiveInt, Opt("Seconds /v1/jobs and batch results stay retrievable")] = 86400
    job_wait_max_s: Annotated[Annotated[float, Meta(ge=0, le=3600)], Opt("Cap of GET /v1/jobs/{id}?wait=N")] = 60.0
    cancel_wait_s: Annotated[
        Annotated[float, Meta(ge=0, le=600)], Opt("How long DELETE waits to see a running job stop")
    ] = 5.0
    # Batch-priority jobs waiting on one worker queue at most: interactive requests never wait
    # behind more than this much batch work. 0 = twice the worker's batch capacity.
    batch_queue_depth: Annotated[NonNegInt, Opt("Batch-priority jobs waiting per worker queue at most")] = 0
    max_file_bytes: Annotated[PositiveInt, Opt("Largest uploaded batch file (413)")] = 200 * 1024 * 1024
    # Quotas and retention (issue 12): batch-priority jobs waiting in the lane at most (/v1/jobs
    # gets 503 beyond it, batches keep their lines unexpanded); how long an image blob nobody
    # references is kept, and how often that is swept; `omega-vlm up`'s private Redis memory cap.
    batch_lane_max: Annotated[PositiveInt, Opt("Batch-priority jobs waiting in the batch lane at most")] = 100_000
    blob_ttl_s: Annotated[NonNegInt, Opt("Unreferenced image blobs are deleted after this (0 = never)")] = 86400
    blob_sweep_interval_s: Annotated[
        Annotated[float, Meta(gt=0)], Opt("How often unreferenced image blobs are looked for")
    ] = 300.0
    redis_maxmemory: Annotated[str, Opt("maxmemory of the private Redis `up` starts (0 = no limit)")] = "2gb"
    max_batch_lines: Annotated[PositiveInt, Opt("Most requests in one batch file")] = 50_000
    # Batch lines turned into queued jobs ahead of the ones finishing (bounds memory and Redis).
    batch_expand_ahead: Annotated[PositiveInt, Opt("Batch lines queued ahead of completions")] = 256
    # Fault tolerance: how often the janitor sweeps, and how many runs that killed their worker a
    # job gets before it fails as a poison request.
    janitor_interval_s: Annotated[
        Annotated[float, Meta(gt=0, le=600)], Opt("How often dead workers' jobs are looked for")
    ] = 1.0
    # How long `up`/`worker` give a worker to finish its batch after SIGTERM before killing it
    # (keep it under Kubernetes' terminationGracePeriodSeconds).
    worker_stop_grace_s: Annotated[
        Annotated[float, Meta(gt=0, le=3600)], Opt("Seconds a stopping worker gets to finish its batch")
    ] = 150.0
    max_job_attempts: Annotated[
        Annotated[int, Meta(ge=1, le=100)], Opt("Runs that killed their worker before a job fails as poison")
    ] = 3
    # Testing only: a worker SIGKILLs itself on a job whose text contains this marker (empty = off).
    fault_kill_marker: Annotated[str, Opt("Testing only: crash a worker on a job containing this text", flags=None)] = (
        ""
    )
    worker_heartbeat_s: Annotated[PositiveFloat, Opt("Worker heartbeat period")] = 2.0
    worker_ttl_s: Annotated[PositiveFloat, Opt("Heartbeat age after which a worker is dead")] = 10.0
    # --- fleet operations (issue 13): queue identity and retirement, worker probes, no-worker hold
    # WORKER_NAME names a worker's queue (with its device label); unset: the host name (in k8s the
    # pod name, via the downward API). A queue whose worker has been gone this long, once empty,
    # leaves rq's queue set and every fleet view.
    worker_name: Annotated[str | None, Opt("Names this worker's queue (default: the host name)")] = None
    dead_queue_retire_s: Annotated[
        NonNegFloat, Opt("Seconds a worker may be gone before its (emptied) queue is retired")
    ] = 300.0
    # Worker probe server (/startup, /readyz, /livez): the first device's port, +index for others;
    # 0 = off. /livez fails when a decoding step has not advanced for WORKER_STALL_S.
    worker_probe_port: Annotated[
        Annotated[int, Meta(ge=0, le=65535)], Opt("Worker probe HTTP port (+device index; 0 = off)")
    ] = 8081
    worker_stall_s: Annotated[PositiveFloat, Opt("Seconds without a decoding step before /livez fails")] = 180.0
    # Interactive jobs (/v1/jobs) accepted while no worker is live wait in the "awaiting worker"
    # list this long at most, then end `expired` (their own expires_after applies if sooner).
    no_worker_wait_s: Annotated[PositiveFloat, Opt("Seconds a job accepted with no live worker waits for one")] = 1800.0
    # Testing only: a decoding loop stalls (sleeps 2 x WORKER_STALL_S) on a job containing this text.
    fault_stall_marker: Annotated[
        str, Opt("Testing only: stall a worker's decoding on a job with this text", flags=None)
    ] = ""

    # --- hardening (issue 12): fetch fairness, image shape, start-up, logs -------------------
    # Connections of the remote-image fetch pool; the share of it batch lines may hold at once;
    # how many images of one request (or batch line) are fetched at once.
    image_fetch_pool_size: Annotated[PositiveInt, Opt("Remote image connections")] = 64
    image_fetch_batch_share: Annotated[
        float, Meta(gt=0, le=1), Opt("Share of the image fetch pool batch work may hold (0-1]")
    ] = 0.5
    image_fetch_per_request: Annotated[PositiveInt, Opt("Images of one request fetched at once")] = 4
    # Longest side over shortest side of one image (Qwen2-VL's resizer refuses over 200), and the
    # pixels of all images of one request together (0 = no limit).
    max_image_aspect_ratio: Annotated[float, Meta(ge=1), Opt("Longest over shortest side of an image (400 above)")] = (
        200.0
    )
    max_request_pixels: Annotated[NonNegInt, Opt("Pixels of all images of a request")] = 100_000_000
    # Consecutive failed starts after which `up`/`worker` stop restarting a worker.
    worker_max_restarts: Annotated[NonNegInt, Opt("Failed starts in a row before a worker is given up")] = 5
    log_format: Annotated[Literal["text", "json"], Opt("text | json (one object per line, for log shippers)")] = "text"
    access_log: Annotated[bool, Opt("Log one line per API request")] = False

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
    def input_char_limit(self) -> int:
        """Prompt text characters accepted: MAX_INPUT_CHARS, or 16 per kept token and at least
        65,536 (tokenizers average a few characters per token on real text, so a longer prompt
        would be mostly cut anyway; the floor keeps truncation useful under small token limits)."""
        return self.max_input_chars or max(16 * self.input_token_limit, 65_536)

    @property
    def wait_replicas(self) -> int:
        """Replicas a submission waits for: REDIS_WAIT_REPLICAS, auto = 1 with sentinels."""
        if self.redis_wait_replicas == "auto":
            return 1 if self.redis_sentinels.strip() else 0
        return self.redis_wait_replicas

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
