"""Where training metrics go: the console (logging), ``OUT/log.jsonl`` (one JSON object per record, appended, so a
resumed run continues the same file) and TensorBoard (``OUT/tensorboard``) when it is installed. Only rank 0
writes; other ranks get a disabled logger. Moved here from ``retrieval/training/logs.py``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOG_NAME = "log.jsonl"


def _tensorboard_writer(directory: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(directory))


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of ``run_dir/log.jsonl`` (a torn last line, from a kill mid-write, is skipped)."""
    path = run_dir / LOG_NAME
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricLogger:
    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = run_dir / LOG_NAME
        self.tb_dir = run_dir / "tensorboard"
        self._file = open(self.path, "a") if enabled else None
        self._tb = _tensorboard_writer(self.tb_dir) if enabled and tensorboard else None

    @property
    def has_tensorboard(self) -> bool:
        return self._tb is not None

    def log(self, kind: str, step: int, values: Mapping[str, Any], console: bool = True) -> None:
        """Append ``{"kind", "step", "time", **values}``; numbers also go to TensorBoard as ``kind/name``."""
        if not self.enabled or self._file is None:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{kind}/{name}", value, step)
        if console:
            shown = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
            logger.info("[%s] step %d  %s", kind, step, shown)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
