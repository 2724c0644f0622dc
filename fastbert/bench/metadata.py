"""Where a measurement was made: device, driver, library versions, commit, date (no hostname)."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch


def _run(cmd: list[str], cwd: str | None = None) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:
        return None


def git_commit() -> dict:
    """``{"commit", "dirty"}`` of the checkout fastbert is imported from, or Nones."""
    repo = str(Path(__file__).resolve().parents[2])
    commit = _run(["git", "rev-parse", "HEAD"], cwd=repo)
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo) if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def cpu_name() -> str | None:
    """The CPU model from /proc/cpuinfo (Linux) or ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def gpu_info(device: torch.device) -> dict:
    """GPU name, compute capability, memory and driver version (via nvidia-smi, when present)."""
    props = torch.cuda.get_device_properties(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", f"--id={index}"])
    return {
        "gpu_name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "gpu_memory_bytes": props.total_memory,
        "driver_version": driver,
        "cuda_version": torch.version.cuda,
    }


def collect(device) -> dict:
    """Metadata for a results file. ``measured_on_gpu`` says whether the numbers are GPU numbers."""
    device = torch.device(device)
    import fastbert

    meta = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device.type,
        "measured_on_gpu": device.type == "cuda",
        "cpu_name": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "torch": torch.__version__,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "fastbert": fastbert.__version__,
        **git_commit(),
        # Settings that change what fastbert runs (backend forcing, the Triton interpreter, input checks).
        "env": {k: os.environ.get(k) for k in ("FASTBERT_BACKEND", "TRITON_INTERPRET", "FASTBERT_CHECK_INPUTS",
                                               "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")},
    }
    if device.type == "cuda":
        meta.update(gpu_info(device))
    else:
        meta.update({"gpu_name": None, "driver_version": None, "cuda_version": torch.version.cuda})
    return meta
