"""What this machine's CPU can do, asked in one place.

Every choice that depends on the CPU (the ``auto`` runtime, both runtimes' ``auto`` precision, OpenVINO's
precision hint) calls these functions through this module (``cpu.has_native_bf16()``), never a copy or a name
imported from it, so a test that pins the CPU it assumes replaces one name
(``monkeypatch.setattr(cpu, "has_native_bf16", ...)``) and every caller sees it. ``LOOKALIKE_CPU_BF16`` pins
the answer for a whole process and the processes it starts (command-line runs in tests, Ray workers), or
where a virtual machine hides the CPU's flags.
"""

from __future__ import annotations

import glob
import os
import platform
from pathlib import Path

from .errors import LookalikeError

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with bfloat16 matrix units
BF16_ENV = "LOOKALIKE_CPU_BF16"


def has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bfloat16 matrix work runs natively rather than emulated (and slower).

    ``LOOKALIKE_CPU_BF16=1`` or ``0`` answers instead of the CPU's flags; without it, False where the flags
    cannot be read (not Linux).

    Raises:
        LookalikeError: ``LOOKALIKE_CPU_BF16`` is neither 1 nor 0.
    """
    pinned = os.environ.get(BF16_ENV, "").strip()
    if pinned:
        if pinned not in ("0", "1"):
            raise LookalikeError(f"{BF16_ENV}={pinned!r}: use 1 (the CPU has native bf16), 0 (it has not), or unset "
                                 "it to read the CPU's flags")
        return pinned == "1"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in BF16_FLAGS)


def is_x86() -> bool:
    """An x86 CPU (where OpenVINO was measured against PyTorch)."""
    return platform.machine().lower() in ("x86_64", "amd64", "x86", "i686")


GPU_DEVICE_FILES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/dxg")  # NVIDIA, ROCm (PyTorch's "cuda" too), WSL


def accelerator_possible() -> bool:
    """Might PyTorch's ``auto`` device be a GPU here? Answered without importing PyTorch, erring towards yes:
    on Linux only when a GPU device file exists (NVIDIA, AMD ROCm, WSL's GPU); elsewhere (macOS has MPS,
    Windows hides its devices) always yes. A no lets a CPU-only process choose OpenVINO without PyTorch."""
    if platform.system() != "Linux":
        return True
    return any(glob.glob(pattern) for pattern in GPU_DEVICE_FILES)
