"""What can change a number, for the `env` stage: package versions, the llama.cpp build's system
info, the OpenMP policy, the CPU. Every measuring stage depends on the file this writes, so an
upgrade (or a wheel built with other flags) reruns them; identical content keeps the cache."""
from __future__ import annotations

import os
import platform
from importlib import metadata

# packages whose version can change a latency, a memory figure or a score
PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "accelerate", "lm_eval",
            "llama_cpp_python", "gguf", "numpy")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def llama_cpp_system_info() -> str | None:
    """The build's enabled features (AVX512, OpenMP, CUDA...); None when not installed."""
    if _version("llama_cpp_python") is None:
        return None
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import llama_cpp
    except Exception as exc:  # noqa: BLE001 - a broken build is a fact to record, not a crash
        return f"unimportable: {type(exc).__name__}: {exc}"[:300]
    info = llama_cpp.llama_print_system_info()
    return (info.decode() if isinstance(info, bytes) else str(info)).strip()


def collect() -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "packages": {name: _version(name) for name in PACKAGES},
        "llama_cpp_system_info": llama_cpp_system_info(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "python": platform.python_version(),
        "cpu": _cpu(),
        "cores": cores,
        "machine": platform.machine(),
    }
