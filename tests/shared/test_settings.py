"""Settings: the seeds' names and flags, precedence CLI > env > defaults, clear errors."""

from __future__ import annotations

import pytest

from shared.settings_sources import (
    OPTIONS,
    SettingsError,
    build_parser,
    load_settings,
    parse_cli_settings,
    settings_to_env,
)

# Every environment variable the seeds name that configures this server.
SEED_ENV = [
    "MODEL_PATH",
    "MODEL_NAME",
    "MODEL_REVISION",
    "TRUST_REMOTE_CODE",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN",
    "CACHE_DIR",
    "TRANSFORMERS_INSTALL_PATH",
    "DTYPE",
    "ATTN_IMPL",
    "ATTN_STRICT",
    "MAX_INPUT_TOKENS",
    "MAX_CONTEXT_TOKENS",
    "MAX_NEW_TOKENS_DEFAULT",
    "MAX_BATCH_SIZE",
    "BATCH_TIMEOUT_MS",
    "MAX_QUEUE_SIZE",
    "GPU_COUNT",
    "GPU_IDS",
    "API_KEY",
    "HOST",
    "PORT",
    "LOG_LEVEL",
    "PROGRESS_LOGS",
    "FAST_USAGE",
    "REDACT_SOURCE",
    "DEBUG",
    "UVICORN_WORKERS",
    "TEMPERATURE_DEFAULT",
    "TOP_P_DEFAULT",
    "TOP_K_DEFAULT",
    "REPETITION_PENALTY_DEFAULT",
    "DO_SAMPLE_DEFAULT",
    "SEED_DEFAULT",
    "MAX_MODEL_LENGTH",
    "MAX_IMAGE_SIZE",
    "MAX_IMAGES_PER_REQUEST",
    "IMAGE_CACHE_SIZE",
    "ALLOW_REMOTE_IMAGES",
]

SEED_FLAGS = [
    "--gpu-count",
    "--gpu-ids",
    "--model-path",
    "--model-id",
    "--model-name",
    "--dtype",
    "--attn-impl",
    "--enable-fa2",
    "--disable-fa2",
    "--max-batch-size",
    "--batch-timeout-ms",
    "--default-temperature",
    "--default-top-p",
    "--default-max-tokens",
    "--default-seed",
    "--default-sampling",
    "--host",
    "--port",
    "--log-level",
    "--progress",
    "--cache-dir",
    "--fast-usage",
    "--redact-source",
    "--debug",
    "--transformers-path",
    "--max-model-length",
]


def test_every_seed_environment_variable_is_read() -> None:
    known = {env for option in OPTIONS for env in option.envs}
    assert set(SEED_ENV) <= known, sorted(set(SEED_ENV) - known)


def test_every_seed_flag_is_accepted() -> None:
    parser = build_parser()
    flags = {flag for action in parser._actions for flag in action.option_strings}
    assert set(SEED_FLAGS) <= flags, sorted(set(SEED_FLAGS) - flags)


def test_defaults() -> None:
    s = load_settings(environ={})
    assert (s.max_batch_size, s.batch_timeout_ms, s.max_queue_size) == (32, 0.0, 256)
    assert (s.temperature_default, s.top_p_default, s.top_k_default, s.seed_default) == (0.8, 0.9, 50, 42)
    assert s.do_sample_default and s.redact_source and s.fast_usage and s.trust_remote_code
    assert not s.progress_logs and not s.debug and s.api_key is None
    assert (s.attn_impl, s.dtype, s.port, s.host) == ("flash_attention_2", "auto", 8000, "0.0.0.0")
    assert (s.max_image_size, s.max_images_per_request, s.image_cache_size) == (1024, 10, 256)
    assert s.allow_remote_images and s.max_input_tokens == 16384 and s.max_model_length == 8192
    assert s.served_model_names == ("model", "omega")
    assert s.effective_log_level == "info"


def test_precedence_cli_over_env_over_defaults() -> None:
    parser = build_parser()
    env = {"MAX_BATCH_SIZE": "4", "PORT": "9000"}
    assert load_settings(environ=env).max_batch_size == 4
    s = load_settings(parser.parse_args(["--max-batch-size", "2"]), environ=env)
    assert (s.max_batch_size, s.port) == (2, 9000)


def test_aliases_and_shortcuts() -> None:
    assert load_settings(environ={"MAX_CONTEXT_TOKENS": "100"}).max_input_tokens == 100
    assert parse_cli_settings(["--model-id", "/m"]).model_path == "/m"
    assert parse_cli_settings(["--disable-fa2"]).attn_impl == "sdpa"
    assert parse_cli_settings(["--attn-impl", "eager", "--enable-fa2"]).attn_impl == "flash_attention_2"
    assert load_settings(environ={"HF_TOKEN": "t"}).hf_token == "t"
    assert load_settings(environ={"HUGGING_FACE_HUB_TOKEN": "old"}).hf_token == "old"
    # huggingface_hub's own order: HF_TOKEN wins over the older name.
    assert load_settings(environ={"HUGGING_FACE_HUB_TOKEN": "old", "HF_TOKEN": "t"}).hf_token == "t"
    assert load_settings(environ={"MODEL_ID": "org/name"}).model_path == "org/name"
    assert load_settings(environ={"MODEL_ID": "org/name", "MODEL_PATH": "/m"}).model_path == "/m"


@pytest.mark.parametrize(
    ("raw", "value"),
    [("1", True), ("true", True), ("YES", True), ("on", True), ("0", False), ("false", False), ("off", False)],
)
def test_booleans(raw: str, value: bool) -> None:
    assert load_settings(environ={"ALLOW_REMOTE_IMAGES": raw}).allow_remote_images is value
    assert parse_cli_settings(["--default-sampling", raw]).do_sample_default is value


def test_bare_boolean_flag_means_true() -> None:
    assert parse_cli_settings(["--progress"]).progress_logs is True


@pytest.mark.parametrize("key", ["", "EMPTY"])
def test_empty_api_key_disables_auth(key: str) -> None:
    assert not load_settings(environ={"API_KEY": key}).auth_enabled


def test_debug_bumps_log_level_unless_set() -> None:
    assert load_settings(environ={"DEBUG": "1"}).effective_log_level == "debug"
    assert load_settings(environ={"DEBUG": "1", "LOG_LEVEL": "warning"}).effective_log_level == "warning"


def test_lists() -> None:
    s = load_settings(environ={"GPU_IDS": "0, 2", "MODEL_ALIASES": "a,b", "IMAGE_FETCH_ALLOW_NETWORKS": "10.0.0.0/8"})
    assert s.gpu_ids == (0, 2) and s.model_aliases == ("a", "b") and s.image_fetch_allow_networks == ("10.0.0.0/8",)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MAX_BATCH_SIZE": "0"}, "MAX_BATCH_SIZE (--max-batch-size)"),
        ({"PORT": "http"}, "PORT (--port)"),
        ({"PORT": "70000"}, "PORT (--port)"),
        ({"DTYPE": "int4"}, "DTYPE (--dtype)"),
        ({"ATTN_IMPL": "flash"}, "ATTN_IMPL (--attn-impl)"),
        ({"DEBUG": "maybe"}, "DEBUG (--debug)"),
        ({"GPU_IDS": "a,b"}, "GPU_IDS (--gpu-ids)"),
        ({"TEMPERATURE_DEFAULT": "9"}, "TEMPERATURE_DEFAULT (--default-temperature)"),
        ({"BLOB_STORE": "s3"}, "S3_BUCKET"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL"),
        ({"IMAGE_FETCH_ALLOW_NETWORKS": "not-a-net"}, "IMAGE_FETCH_ALLOW_NETWORKS"),
        ({"WORKER_TTL_S": "1", "WORKER_HEARTBEAT_S": "2"}, "WORKER_TTL_S"),
    ],
)
def test_invalid_values_name_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(environ=env)
    assert named in str(err.value)


def test_children_inherit_the_validated_settings() -> None:
    parent = parse_cli_settings(["--max-batch-size", "3", "--api-key", "k"])
    child = load_settings(environ={**settings_to_env(parent), "MAX_BATCH_SIZE": "9"})
    assert child == parent


def test_secrets_are_not_in_repr() -> None:
    s = load_settings(environ={"API_KEY": "supersecret", "HF_TOKEN": "hf_abc"})
    assert "supersecret" not in repr(s) and "hf_abc" not in repr(s)


def test_invalid_setting_stops_the_command_with_a_message() -> None:
    import subprocess
    import sys

    from tests.support.procs import ROOT

    result = subprocess.run(
        [sys.executable, "-m", "omega_vlm.cli", "api"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "MAX_QUEUE_SIZE": "-3"},
        timeout=60,
    )
    assert result.returncode == 2
    assert "MAX_QUEUE_SIZE (--max-queue-size)" in result.stderr
    assert "Traceback" not in result.stderr
