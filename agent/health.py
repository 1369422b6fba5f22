"""The gateway's own health for the metrics topic: CPU, memory and disk, sampled with psutil."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psutil


class HealthSampler:
    def __init__(self, data_dir: Path):
        self._process = psutil.Process(os.getpid())
        self._data_dir = data_dir

    def sample(self) -> dict[str, Any]:
        with self._process.oneshot():
            cpu = self._process.cpu_percent(None)   # since the previous sample; % of one core
            rss = self._process.memory_info().rss
        disk = psutil.disk_usage(str(self._data_dir))
        memory = psutil.virtual_memory()
        return {
            "cpu": {"agent_percent": round(cpu, 1), "system_percent": psutil.cpu_percent(None),
                    "cores": psutil.cpu_count() or 1},
            "memory": {"agent_rss_bytes": rss, "system_used_percent": memory.percent},
            "disk": {"path": str(self._data_dir), "free_bytes": disk.free, "used_percent": disk.percent},
        }
