"""Finding this machine's GPUs, as Ray does when ``num_gpus`` is not given.

NVML is read through ctypes, so detection needs the NVIDIA driver's ``libnvidia-ml.so.1`` and
nothing else: no pynvml, no CUDA toolkit. Without the library (or with a driver that fails) there
are no GPUs. ``python -m ember.runtime.accelerators`` prints what it finds.
"""

import ctypes
import os
import re

# Ray's accelerator type constants (ray.util.accelerators), most specific first: a device name is
# matched against these whole words, so "A100" does not match "A10" and "H200" is not "H20".
ACCELERATOR_TYPES = (
    "H200",
    "H100",
    "H20",
    "B200",
    "GB200",
    "A100",
    "A10G",
    "A10",
    "L40S",
    "L4",
    "V100",
    "P100",
    "T4",
    "P4",
    "K80",
)

# Ray's fallback: the second word of the device name ("Tesla T4" -> "T4", "NVIDIA A40" -> "A40").
_NAME_PATTERN = re.compile(r"\w+\s+([A-Z0-9]+)")


def accelerator_type_of(name: str) -> str:
    """The Ray accelerator type of a device name: "NVIDIA H100 80GB HBM3" -> "H100",
    "Tesla V100-SXM2-16GB" -> "V100", "NVIDIA A10G" -> "A10G". Returns "" when nothing matches.

    Nodes advertise ``accelerator_type:<TYPE>`` as a resource, so ``accelerator_type="H100"`` on a
    task or actor places it on such a node, as in Ray.
    """
    if not isinstance(name, str):
        raise TypeError(f"accelerator_type_of() expects a device name string, got {type(name).__name__}.")
    words = set(re.split(r"[\s\-_/]+", name.upper()))
    for accelerator in ACCELERATOR_TYPES:
        if accelerator in words:
            return accelerator
    match = _NAME_PATTERN.match(name)
    return match.group(1) if match else ""


def _visible(count: int) -> list | None:
    """Which device indices CUDA_VISIBLE_DEVICES leaves visible (None: all of them). Entries that
    are not indices (GPU UUIDs, MIG names) are returned as strings to match by UUID."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    visible = []
    for entry in value.split(","):
        entry = entry.strip()
        if not entry:
            continue
        if entry.lstrip("-").isdigit():
            index = int(entry)
            if index < 0 or index >= count:
                break  # CUDA stops at the first invalid index and ignores the rest
            visible.append(index)
        else:
            visible.append(entry)
    return visible


def detect_gpus() -> list:
    """One name per GPU this process may use (NVML, honouring CUDA_VISIBLE_DEVICES); [] without NVML."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return []
    try:
        if nvml.nvmlInit_v2() != 0:
            return []
    except AttributeError:
        return []
    try:
        count = ctypes.c_uint(0)
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            return []
        devices = []
        for index in range(count.value):
            handle = ctypes.c_void_p()
            if nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) != 0:
                continue
            name = ctypes.create_string_buffer(96)
            if nvml.nvmlDeviceGetName(handle, name, 96) != 0:
                continue
            uuid = ctypes.create_string_buffer(96)
            if nvml.nvmlDeviceGetUUID(handle, uuid, 96) != 0:
                uuid.value = b""
            devices.append((index, uuid.value.decode(errors="replace"), name.value.decode(errors="replace")))
        visible = _visible(count.value)
        if visible is None:
            return [name for _, _, name in devices]
        names = []
        for entry in visible:
            for index, uuid, name in devices:
                if entry == index or (isinstance(entry, str) and uuid and uuid.startswith(entry)):
                    names.append(name)
                    break
        return names
    except (AttributeError, OSError):
        return []
    finally:
        try:
            nvml.nvmlShutdown()
        except (AttributeError, OSError):
            pass


def gpu_resources() -> dict:
    """The resources this machine's GPUs give a node: GPU count plus ``accelerator_type:<TYPE>``."""
    names = detect_gpus()
    if not names:
        return {}
    resources = {"GPU": float(len(names))}
    accelerator = accelerator_type_of(names[0])
    if accelerator:
        resources[f"accelerator_type:{accelerator}"] = 1.0
    return resources


if __name__ == "__main__":
    found = detect_gpus()
    if not found:
        print("No GPUs found (no NVML library, no devices, or CUDA_VISIBLE_DEVICES hides them).")
    for i, device in enumerate(found):
        print(f"GPU {i}: {device} (accelerator_type: {accelerator_type_of(device) or 'unknown'})")
    print(f"node resources: {gpu_resources()}")
