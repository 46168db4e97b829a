"""GPU detection and Ray's accelerator types, without needing a GPU."""

import ctypes.util
import subprocess
import sys

import pytest

from ember.runtime import accelerators
from ember.runtime.accelerators import accelerator_type_of, detect_gpus


@pytest.mark.parametrize(
    "name, expected",
    [
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H100 PCIe", "H100"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA H20", "H20"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100-PCIE-40GB", "A100"),
        ("NVIDIA A10G", "A10G"),
        ("NVIDIA A10", "A10"),
        ("Tesla V100-SXM2-16GB", "V100"),
        ("Tesla T4", "T4"),
        ("Tesla P4", "P4"),
        ("Tesla K80", "K80"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA B200", "B200"),
        ("NVIDIA A40", "A40"),  # not a named constant: Ray's rule, the second word
        ("weird", ""),
    ],
)
def test_accelerator_type_of(name, expected):
    assert accelerator_type_of(name) == expected


def test_accelerator_type_of_rejects_non_strings():
    with pytest.raises(TypeError):
        accelerator_type_of(None)


def test_cuda_visible_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert accelerators._visible(4) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    assert accelerators._visible(4) == [2, 0]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert accelerators._visible(4) == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,7,0")  # CUDA ignores everything from an invalid index on
    assert accelerators._visible(4) == [1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1234abcd")
    assert accelerators._visible(4) == ["GPU-1234abcd"]


@pytest.mark.skipif(ctypes.util.find_library("nvidia-ml") is not None, reason="this machine has NVML")
def test_no_nvml_means_no_gpus():
    assert detect_gpus() == []
    assert accelerators.gpu_resources() == {}
    out = subprocess.run(
        [sys.executable, "-m", "ember.runtime.accelerators"], capture_output=True, text=True, check=True
    ).stdout
    assert "No GPUs found" in out


def test_hidden_devices_are_not_counted(monkeypatch):
    # With every device hidden, nothing is detected, NVML or not.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert detect_gpus() == []
