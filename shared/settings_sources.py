"""Where settings come from: built-in defaults < environment variables < CLI flags.

The option table (`OPTIONS`) lists every environment variable and flag, with the seeds'
spelling; it is derived from the `Opt` each field of `Settings` declares, so a setting is named
and described in one place. `load_settings` validates the merged values once and raises `SettingsError`
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

from shared.settings import Opt, Settings

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


def _options() -> tuple[Option, ...]:
    """The option table, in field order, from each field's `Opt` (shared/settings.py)."""
    hints = get_type_hints(Settings, include_extras=True)
    options = []
    for field in Settings.__struct_fields__:
        opt = next((m for m in getattr(hints[field], "__metadata__", ()) if isinstance(m, Opt)), None)
        if opt is None:
            raise TypeError(f"Settings.{field} declares no Opt (environment name, flag, help)")
        options.append(Option(field, opt.envs_for(field), opt.flags_for(field), opt.help))
    return tuple(options)


OPTIONS: tuple[Option, ...] = _options()

_BY_FIELD = {o.field: o for o in OPTIONS}


def describe(field: str) -> str:
    """'MAX_BATCH_SIZE (--max-batch-size)': how the user spells a setting."""
    option = _BY_FIELD.get(field)
    if option is None:
        return field
    names = [option.envs[0], *option.flags[:1]]
    return f"{names[0]} ({names[1]})" if len(names) > 1 else names[0]


def _hints() -> dict[str, Any]:
    """Each field's type without its Annotated metadata (constraints and `Opt`)."""
    return get_type_hints(Settings)


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
    from shared.redis_connect import parse_sentinels

    try:
        parse_sentinels(settings.redis_sentinels)
    except ValueError as exc:
        raise SettingsError(f"invalid value for {describe('redis_sentinels')}: {exc}") from exc
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
