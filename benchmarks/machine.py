"""Which machine a benchmark ran on: every benchmark prints this line first, since CPUs differ between the
machines that run them (Intel with AMX/AVX-512 bf16, AMD EPYC with or without avx512_bf16)."""

from __future__ import annotations

import os
import platform
import subprocess


def describe_machine() -> str:
    """``cpu: <lscpu Model name>, N cores, bf16 units yes/no`` (``platform.processor()`` where lscpu is missing)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name")),
                     "")
    except (OSError, subprocess.SubprocessError):
        model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
        bf16 = "yes (" + ", ".join(f for f in ("amx_bf16", "avx512_bf16") if f in flags) + ")" \
            if ("amx_bf16" in flags or "avx512_bf16" in flags) else "no"
    except OSError:
        bf16 = "unknown"
    caps = [f"{name}={os.environ[name]}" for name in ("ONEDNN_MAX_CPU_ISA", "OV_CPU_MAX_ISA", "LOOKALIKE_CPU_BF16")
            if os.environ.get(name)]
    emulated = f"; emulating another CPU: {' '.join(caps)}" if caps else ""
    return f"cpu: {model or platform.processor() or 'unknown'}, {os.cpu_count()} cores, bf16 units {bf16}{emulated}"
