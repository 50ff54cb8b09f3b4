"""Which devices get a worker: GPU_IDS, else the first GPU_COUNT visible GPUs, else CPU_WORKERS."""

from __future__ import annotations

import glob

from shared.settings import Settings
from shared.settings_sources import SettingsError, describe

# A GPU a CUDA (or ROCm) build of torch can see has these device nodes (the NVIDIA container
# toolkit and the device plugin put them into a pod): without any, there is no GPU to count, and the
# supervisor need not import torch (~2 s of CPU before the first child starts; `up`'s resident
# memory was 560 MB with torch and transformers imported, 49 MB without).
GPU_DEVICE_NODES = ("/dev/nvidia[0-9]*", "/dev/kfd")


def gpu_device_nodes() -> bool:
    return any(glob.glob(pattern) for pattern in GPU_DEVICE_NODES)


def visible_gpus() -> int:
    if not gpu_device_nodes():
        return 0
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
