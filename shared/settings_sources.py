"""Where settings come from: built-in defaults < environment variables < CLI flags.

The option table below is the single list of every environment variable and flag, with the
seeds' spelling. `load_settings` validates the merged values once and raises `SettingsError`
naming the offending setting, so a bad value stops start-up with a clear message.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, get_args, get_origin, get_type_hints

import msgspec

from shared.settings import Settings

# Set by `omega-vlm up` for the processes it starts, so that every child runs on exactly the
# settings the parent validated (CLI flags included).
SETTINGS_ENV = "OMEGA_SETTINGS_JSON"

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}


class SettingsError(ValueError):
    """An invalid setting; the message names the environment variable and flag."""


@dataclass(frozen=True)
class Option:
    field: str
    envs: tuple[str, ...]
    flags: tuple[str, ...]
    help: str


def _o(field: str, envs: str | tuple[str, ...], flags: str | tuple[str, ...], help: str) -> Option:
    envs_t = (envs,) if isinstance(envs, str) else envs
    flags_t = (flags,) if isinstance(flags, str) else flags
    return Option(field, envs_t, flags_t, help)


OPTIONS: tuple[Option, ...] = (
    # model
    _o(
        "model_path",
        "MODEL_PATH",
        ("--model-path", "--model-id"),
        "Local model folder or Hugging Face repo id; unset = the generated demo model",
    ),
    _o("model_name", "MODEL_NAME", "--model-name", "Display model name; requests must use it"),
    _o("model_aliases", "MODEL_ALIASES", "--model-aliases", "Comma-separated extra names the model contract accepts"),
    _o("model_revision", "MODEL_REVISION", "--model-revision", "Hub branch/tag/commit to pin"),
    _o("trust_remote_code", "TRUST_REMOTE_CODE", "--trust-remote-code", "Allow custom model code"),
    _o("hf_token", ("HUGGING_FACE_HUB_TOKEN", "HF_TOKEN"), (), "Token for private hub models"),
    _o("cache_dir", "CACHE_DIR", "--cache-dir", "Hugging Face hub cache folder (sets HF_HUB_CACHE)"),
    _o(
        "transformers_path",
        "TRANSFORMERS_INSTALL_PATH",
        "--transformers-path",
        "pip-install this transformers (path, URL or wheel) before a worker starts",
    ),
    # compute
    _o("dtype", "DTYPE", "--dtype", "auto | bf16 | fp16 | fp32 (auto: bf16 on GPU, fp32 on CPU)"),
    _o("attn_impl", "ATTN_IMPL", "--attn-impl", "flash_attention_2 | sdpa | eager"),
    _o("attn_strict", "ATTN_STRICT", "--attn-strict", "Fail start-up instead of falling back"),
    _o(
        "torch_compile",
        "TORCH_COMPILE",
        "--torch-compile",
        "auto | on | off: static KV cache + torch.compile for decoding (auto: on for GPU)",
    ),
    # batching and limits
    _o("max_batch_size", "MAX_BATCH_SIZE", "--max-batch-size", "Requests per micro-batch"),
    _o("batch_timeout_ms", "BATCH_TIMEOUT_MS", "--batch-timeout-ms", "Micro-batch collection window"),
    _o("max_queue_size", "MAX_QUEUE_SIZE", "--max-queue-size", "Waiting jobs per worker before 503"),
    _o(
        "max_input_tokens",
        ("MAX_INPUT_TOKENS", "MAX_CONTEXT_TOKENS"),
        ("--max-input-tokens", "--max-context-tokens"),
        "Prompt tokens kept (left-truncated)",
    ),
    _o("max_model_length", "MAX_MODEL_LENGTH", "--max-model-length", "Prompt + new tokens per row"),
    _o("max_new_tokens_default", "MAX_NEW_TOKENS_DEFAULT", "--default-max-tokens", "Default and cap for max_tokens"),
    _o(
        "max_batch_tokens",
        "MAX_BATCH_TOKENS",
        "--max-batch-tokens",
        "Per generate call: rows x (prompt + new tokens) at most (0 = no limit)",
    ),
    _o(
        "max_batch_pixels",
        "MAX_BATCH_PIXELS",
        "--max-batch-pixels",
        "Per generate call: image pixels at most (0 = no limit)",
    ),
    _o("request_timeout_s", "REQUEST_TIMEOUT_S", "--request-timeout-s", "Synchronous wait before 504"),
    # generation defaults
    _o("do_sample_default", "DO_SAMPLE_DEFAULT", "--default-sampling", "Sample by default (else greedy)"),
    _o("temperature_default", "TEMPERATURE_DEFAULT", "--default-temperature", "Default temperature"),
    _o("top_p_default", "TOP_P_DEFAULT", "--default-top-p", "Default nucleus p"),
    _o("top_k_default", "TOP_K_DEFAULT", "--default-top-k", "Default top-k (0 = off)"),
    _o(
        "repetition_penalty_default",
        "REPETITION_PENALTY_DEFAULT",
        "--default-repetition-penalty",
        "Default repetition penalty",
    ),
    _o("seed_default", "SEED_DEFAULT", "--default-seed", "Default sampling seed"),
    # devices
    _o("gpu_count", "GPU_COUNT", "--gpu-count", "Use the first N visible GPUs"),
    _o("gpu_ids", "GPU_IDS", "--gpu-ids", "Comma-separated CUDA indices (overrides GPU_COUNT)"),
    _o("cpu_workers", "CPU_WORKERS", "--cpu-workers", "Worker processes when no GPU is visible"),
    # server
    _o("host", "HOST", "--host", "Bind address"),
    _o("port", "PORT", "--port", "HTTP port"),
    _o("log_level", "LOG_LEVEL", "--log-level", "critical | error | warning | info | debug | trace"),
    _o("progress_logs", "PROGRESS_LOGS", "--progress", "Start-up heartbeat and per-request lines"),
    _o("fast_usage", "FAST_USAGE", "--fast-usage", "Usage from the worker's token ids"),
    _o("redact_source", "REDACT_SOURCE", "--redact-source", "Hide model path in logs and /health"),
    _o("debug", "DEBUG", "--debug", "Debug logging with tracebacks"),
    _o("uvicorn_workers", "UVICORN_WORKERS", "--uvicorn-workers", "API processes (the API holds no model)"),
    _o("api_key", "API_KEY", "--api-key", "Bearer key for /v1/*, /generate and the docs"),
    _o("max_request_bytes", "MAX_REQUEST_BYTES", "--max-request-bytes", "Largest request body (413)"),
    # images
    _o("max_image_size", "MAX_IMAGE_SIZE", "--max-image-size", "Longest image side after resize"),
    _o("max_images_per_request", "MAX_IMAGES_PER_REQUEST", "--max-images-per-request", "Images per request"),
    _o("image_cache_size", "IMAGE_CACHE_SIZE", "--image-cache-size", "Decoded images a worker keeps"),
    _o("allow_remote_images", "ALLOW_REMOTE_IMAGES", "--allow-remote-images", "Fetch http(s) image URLs"),
    _o("max_image_pixels", "MAX_IMAGE_PIXELS", "--max-image-pixels", "Pixel cap (width x height)"),
    _o("max_image_bytes", "MAX_IMAGE_BYTES", "--max-image-bytes", "Encoded bytes per image"),
    _o("image_fetch_timeout_s", "IMAGE_FETCH_TIMEOUT_S", "--image-fetch-timeout-s", "Total deadline per remote image"),
    _o(
        "image_fetch_max_redirects",
        "IMAGE_FETCH_MAX_REDIRECTS",
        "--image-fetch-max-redirects",
        "Redirects followed per remote image",
    ),
    _o(
        "image_fetch_allow_networks",
        "IMAGE_FETCH_ALLOW_NETWORKS",
        "--image-fetch-allow-networks",
        "Comma-separated non-global CIDRs remote images may come from (tests only)",
    ),
    # storage and queues
    _o("redis_url", "REDIS_URL", "--redis-url", "Redis for queues and results"),
    _o("data_dir", "DATA_DIR", "--data-dir", "Demo model, local blobs and private Redis data"),
    _o("blob_store", "BLOB_STORE", "--blob-store", "auto | local | s3 (auto: s3 when S3_BUCKET is set)"),
    _o("blob_dir", "BLOB_DIR", "--blob-dir", "Local blob folder (default DATA_DIR/blobs)"),
    _o("s3_bucket", "S3_BUCKET", "--s3-bucket", "S3 bucket for image blobs"),
    _o("s3_endpoint_url", "S3_ENDPOINT_URL", "--s3-endpoint-url", "S3-compatible endpoint (MinIO, Ceph)"),
    _o("s3_region", ("S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"), "--s3-region", "S3 region"),
    _o("s3_prefix", "S3_PREFIX", "--s3-prefix", "Key prefix inside the bucket"),
    _o("s3_access_key_id", ("S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"), (), "S3 access key"),
    _o("s3_secret_access_key", ("S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"), (), "S3 secret key"),
    _o("result_ttl_s", "RESULT_TTL_S", "--result-ttl-s", "Seconds synchronous results are kept in Redis"),
    _o(
        "job_result_ttl_s",
        "JOB_RESULT_TTL_S",
        "--job-result-ttl-s",
        "Seconds /v1/jobs and batch results stay retrievable",
    ),
    _o("job_wait_max_s", "JOB_WAIT_MAX_S", "--job-wait-max-s", "Cap of GET /v1/jobs/{id}?wait=N"),
    _o("cancel_wait_s", "CANCEL_WAIT_S", "--cancel-wait-s", "How long DELETE waits to see a running job stop"),
    _o(
        "batch_queue_depth",
        "BATCH_QUEUE_DEPTH",
        "--batch-queue-depth",
        "Batch-priority jobs waiting per worker queue at most",
    ),
    _o("max_file_bytes", "MAX_FILE_BYTES", "--max-file-bytes", "Largest uploaded batch file (413)"),
    _o("max_batch_lines", "MAX_BATCH_LINES", "--max-batch-lines", "Most requests in one batch file"),
    _o(
        "janitor_interval_s",
        "JANITOR_INTERVAL_S",
        "--janitor-interval-s",
        "How often dead workers' jobs are looked for",
    ),
    _o(
        "worker_stop_grace_s",
        "WORKER_STOP_GRACE_S",
        "--worker-stop-grace-s",
        "Seconds a stopping worker gets to finish its batch",
    ),
    _o(
        "max_job_attempts",
        "MAX_JOB_ATTEMPTS",
        "--max-job-attempts",
        "Runs that killed their worker before a job fails as poison",
    ),
    _o("fault_kill_marker", "FAULT_KILL_MARKER", (), "Testing only: crash a worker on a job containing this text"),
    _o("batch_expand_ahead", "BATCH_EXPAND_AHEAD", "--batch-expand-ahead", "Batch lines queued ahead of completions"),
    _o("worker_heartbeat_s", "WORKER_HEARTBEAT_S", "--worker-heartbeat-s", "Worker heartbeat period"),
    _o("worker_ttl_s", "WORKER_TTL_S", "--worker-ttl-s", "Heartbeat age after which a worker is dead"),
    # hardening (issue 12)
    _o("image_fetch_pool_size", "IMAGE_FETCH_POOL_SIZE", "--image-fetch-pool-size", "Remote image connections"),
    _o(
        "image_fetch_batch_share",
        "IMAGE_FETCH_BATCH_SHARE",
        "--image-fetch-batch-share",
        "Share of the image fetch pool batch work may hold (0-1]",
    ),
    _o(
        "image_fetch_per_request",
        "IMAGE_FETCH_PER_REQUEST",
        "--image-fetch-per-request",
        "Images of one request fetched at once",
    ),
    _o(
        "max_image_aspect_ratio",
        "MAX_IMAGE_ASPECT_RATIO",
        "--max-image-aspect-ratio",
        "Longest over shortest side of an image (400 above)",
    ),
    _o("max_request_pixels", "MAX_REQUEST_PIXELS", "--max-request-pixels", "Pixels of all images of a request"),
    _o(
        "worker_max_restarts",
        "WORKER_MAX_RESTARTS",
        "--worker-max-restarts",
        "Failed starts in a row before a worker is given up",
    ),
    _o("log_format", "LOG_FORMAT", "--log-format", "text | json (one object per line, for log shippers)"),
    _o("access_log", "ACCESS_LOG", "--access-log", "Log one line per API request"),
)

_BY_FIELD = {o.field: o for o in OPTIONS}


def describe(field: str) -> str:
    """'MAX_BATCH_SIZE (--max-batch-size)': how the user spells a setting."""
    option = _BY_FIELD.get(field)
    if option is None:
        return field
    names = [option.envs[0], *option.flags[:1]]
    return f"{names[0]} ({names[1]})" if len(names) > 1 else names[0]


def _hints() -> dict[str, Any]:
    return get_type_hints(Settings, include_extras=True)


def _is_bool(tp: Any) -> bool:
    return tp is bool


def _is_sequence(tp: Any) -> bool:
    """tuple[...] or tuple[...] | None: given as a comma-separated list."""
    candidates = (tp,) if get_origin(tp) is tuple else get_args(tp)
    return any(get_origin(c) is tuple for c in candidates)


def _coerce(field: str, raw: str) -> Any:
    """Turn one raw string (env or CLI) into the JSON-ish value msgspec validates."""
    tp = _hints()[field]
    if _is_bool(tp):
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise SettingsError(f"invalid value for {describe(field)}: {raw!r} is not a boolean (true/false)")
    if _is_sequence(tp):
        return [item.strip() for item in re.split(r"[,\s]+", raw) if item.strip()]
    if raw.strip() == "" and type(None) in get_args(tp):
        return None
    return raw.strip()


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for option in OPTIONS:
        for env in option.envs:
            if env in environ:
                values[option.field] = _coerce(option.field, environ[env])
                break
    return values


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add every settings flag to `parser`; unset flags stay absent so lower layers show through."""
    parser = parser or argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("settings (each also read from its environment variable)")
    for option in OPTIONS:
        if not option.flags:
            continue
        env_note = f" [env {option.envs[0]}]"
        if _is_bool(_hints()[option.field]):
            group.add_argument(
                *option.flags,
                dest=option.field,
                nargs="?",
                const="true",
                default=argparse.SUPPRESS,
                metavar="true|false",
                help=option.help + env_note,
            )
        else:
            group.add_argument(*option.flags, dest=option.field, default=argparse.SUPPRESS, help=option.help + env_note)
    # The seeds' attention shortcuts; they take precedence over --attn-impl.
    group.add_argument(
        "--enable-fa2",
        dest="_fa2",
        action="store_const",
        const="flash_attention_2",
        default=argparse.SUPPRESS,
        help="Shortcut for --attn-impl flash_attention_2",
    )
    group.add_argument(
        "--disable-fa2",
        dest="_fa2",
        action="store_const",
        const="sdpa",
        default=argparse.SUPPRESS,
        help="Shortcut for --attn-impl sdpa",
    )
    return parser


def _from_namespace(namespace: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, raw in vars(namespace).items():
        if key == "_fa2":
            values["attn_impl"] = raw
        elif key in _BY_FIELD and raw is not None:
            values[key] = _coerce(key, str(raw))
    return values


def _normalise(values: dict[str, Any]) -> dict[str, Any]:
    # The seeds treat API_KEY="EMPTY" (or blank) as "auth disabled".
    if values.get("api_key") in ("", "EMPTY"):
        values["api_key"] = None
    return values


def _validation_message(error: msgspec.ValidationError, values: Mapping[str, Any]) -> str:
    text = str(error)
    match = re.search(r"at `\$\.([a-z0-9_]+)", text)
    if not match:
        return f"invalid settings: {text}"
    field = match.group(1)
    reason = text.split(" - at ")[0]
    return f"invalid value for {describe(field)}: {values.get(field)!r} ({reason})"


def _check(settings: Settings) -> None:
    """Cross-field rules that a single field's type cannot express."""
    if settings.blob_store_kind == "s3" and not settings.s3_bucket:
        raise SettingsError(f"{describe('blob_store')} is s3 but {describe('s3_bucket')} is not set")
    if settings.worker_ttl_s <= settings.worker_heartbeat_s:
        raise SettingsError(f"{describe('worker_ttl_s')} must be larger than {describe('worker_heartbeat_s')}")
    if not settings.model_name.strip():
        raise SettingsError(f"{describe('model_name')} must not be empty")
    if not settings.redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError(f"invalid value for {describe('redis_url')}: expected redis://, rediss:// or unix://")
    import ipaddress

    for cidr in settings.image_fetch_allow_networks:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise SettingsError(f"invalid value for {describe('image_fetch_allow_networks')}: {exc}") from exc


def settings_from_values(values: dict[str, Any]) -> Settings:
    """Validate a merged mapping of field -> value into Settings (raises SettingsError)."""
    values = _normalise(values)
    try:
        settings = msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_validation_message(exc, values)) from None
    _check(settings)
    return settings


def load_settings(namespace: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults < environment < CLI flags, validated once.

    A child process started by `omega-vlm up` inherits the parent's validated settings through
    OMEGA_SETTINGS_JSON instead of re-reading the environment.
    """
    environ = os.environ if environ is None else environ
    inherited = environ.get(SETTINGS_ENV)
    values: dict[str, Any] = msgspec.json.decode(inherited) if inherited else _from_env(environ)
    if namespace is not None:
        values.update(_from_namespace(namespace))
    return settings_from_values(values)


def settings_to_env(settings: Settings) -> dict[str, str]:
    """The environment entry that hands `settings` to a child process."""
    return {SETTINGS_ENV: msgspec.json.encode(settings).decode()}


def parse_cli_settings(argv: Sequence[str]) -> Settings:
    """Convenience for tests and scripts: parse settings flags only."""
    namespace, _ = build_parser().parse_known_args(list(argv))
    return load_settings(namespace, environ={})
