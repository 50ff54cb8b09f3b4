"""GPU selection as the seeds describe it: GPU_IDS, else the first GPU_COUNT, else CPU workers."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from omega_vlm.devices import select_devices
from shared.settings_sources import SettingsError, load_settings


def pick(visible: int, **env: str) -> list[str]:
    return select_devices(load_settings(environ=env), visible=visible)


def test_default_is_one_gpu_when_any_is_visible() -> None:
    assert pick(4) == ["cuda:0"]


def test_gpu_count_and_ids() -> None:
    assert pick(4, GPU_COUNT="3") == ["cuda:0", "cuda:1", "cuda:2"]
    assert pick(4, GPU_IDS="3,1", GPU_COUNT="1") == ["cuda:3", "cuda:1"]


def test_no_gpu_means_cpu_workers() -> None:
    assert pick(0) == ["cpu"]
    assert pick(0, CPU_WORKERS="3") == ["cpu", "cpu", "cpu"]
    assert pick(2, GPU_COUNT="0", CPU_WORKERS="2") == ["cpu", "cpu"]


@pytest.mark.parametrize("env", [{"GPU_IDS": "0,5"}, {"GPU_COUNT": "9"}])
def test_asking_for_more_than_visible_is_an_error(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        pick(2, **env)


def test_gpu_device_nodes_decide_whether_torch_is_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """No /dev/nvidia<N> or /dev/kfd: no GPU, and torch is not asked (nor imported) to count none."""
    from omega_vlm import devices

    three = SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: True, device_count=lambda: 3))
    monkeypatch.setitem(sys.modules, "torch", three)  # what `import torch` in visible_gpus gets
    monkeypatch.setattr(devices, "GPU_DEVICE_NODES", ("/nonexistent/nvidia[0-9]*", "/nonexistent/kfd"))
    assert not devices.gpu_device_nodes()
    assert devices.visible_gpus() == 0
    monkeypatch.setattr(devices, "GPU_DEVICE_NODES", ("/nonexistent/kfd", "/dev/nul[l]"))  # one that exists
    assert devices.visible_gpus() == 3
