"""What machine a benchmark figure was taken on: CPU model, core count and, on a GPU run, the GPU.

Shared by the ``bench_*.py`` scripts (they run with ``benchmarks/`` first on ``sys.path``). The CPU model
comes from ``/proc/cpuinfo``'s ``model name`` on Linux, where ``platform.processor()`` is usually empty,
and from ``platform.processor()`` elsewhere.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name (e.g. ``Intel(R) Xeon(R) Processor``), or ``""`` when nothing says."""
    try:
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:  # not Linux, or /proc not mounted
        pass
    return platform.processor()


def machine_info(device: str = "cpu") -> dict:
    """``processor``, ``cpu_count`` and, for a CUDA ``device``, the GPU's name and memory."""
    info: dict = {"processor": cpu_model(), "cpu_count": os.cpu_count(), "device": device}
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(torch.device(device))
            info.update(
                gpu=props.name,
                gpu_memory_bytes=props.total_memory,
                cuda=torch.version.cuda,
            )
    return info
