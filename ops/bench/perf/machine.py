"""The machine a run measured: cores, CPU model, Python, Redis, and how busy it was."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


@dataclass(frozen=True)
class Machine:
    cores: int
    cpu: str
    python: str
    redis: str

    @classmethod
    def describe(cls, redis_version: str) -> Machine:
        return cls(os.cpu_count() or 0, cpu_model(), platform.python_version(), redis_version)

    def line(self) -> str:
        return (
            f"{self.cores} cores ({self.cpu}), Python {self.python}, "
            f"Redis {self.redis}, {platform.system()} {platform.release()}"
        )
