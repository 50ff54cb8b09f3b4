"""Which devices get a worker: GPU_IDS, else the first GPU_COUNT visible GPUs, else CPU_WORKERS."""

from __future__ import annotations

from shared.settings import Settings
from shared.settings_sources import SettingsError, describe


def visible_gpus() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def select_devices(settings: Settings, visible: int | None = None) -> list[str]:
    visible = visible_gpus() if visible is None else visible
    if settings.gpu_ids:
        missing = [i for i in settings.gpu_ids if i >= visible]
        if missing:
            raise SettingsError(f"{describe('gpu_ids')} names GPU {missing[0]} but {visible} GPU(s) are visible")
        return [f"cuda:{i}" for i in dict.fromkeys(settings.gpu_ids)]
    if visible > 0 and settings.gpu_count != 0:
        count = 1 if settings.gpu_count is None else settings.gpu_count
        if count > visible:
            raise SettingsError(f"{describe('gpu_count')} is {count} but {visible} GPU(s) are visible")
        return [f"cuda:{i}" for i in range(count)]
    return ["cpu"] * settings.cpu_workers
