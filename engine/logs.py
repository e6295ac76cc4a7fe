"""Where training metrics go: the console (logging), ``OUT/log.jsonl`` (one JSON object per record, appended, so a
resumed run continues the same file), TensorBoard (``OUT/tensorboard``) when it is installed, and Weights & Biases
when asked (``loop.wandb`` ``offline``: a run directory under ``OUT/wandb`` without network, for ``wandb sync``
later; ``online``; the package is needed only then). Only rank 0 writes; other ranks get a disabled logger. Moved
here from ``retrieval/training/logs.py``.
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


def require_wandb(mode: str) -> Any:
    """The ``wandb`` module, or one error line saying how to get it (it is optional)."""
    try:
        import wandb
    except ImportError:
        from foundations.errors import UserError

        raise UserError(f"--wandb {mode} needs the wandb package (pip install wandb); it is optional: leave --wandb "
                        "off to log to log.jsonl and TensorBoard only") from None
    return wandb


def _wandb_run(run_dir: Path, mode: str, project: str, config: Mapping[str, Any] | None) -> Any:
    wandb = require_wandb(mode)
    settings = wandb.Settings(console="off", quiet=True, x_disable_stats=True)  # no stdout capture, no sampling
    return wandb.init(project=project, dir=str(run_dir), mode=mode, config=dict(config or {}), name=run_dir.name,
                      settings=settings)


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
    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True, wandb: str = "off",
                 wandb_project: str = "vlt5r", config: Mapping[str, Any] | None = None) -> None:
        self.enabled = enabled
        self.path = run_dir / LOG_NAME
        self.tb_dir = run_dir / "tensorboard"
        self._file = open(self.path, "a") if enabled else None
        self._tb = _tensorboard_writer(self.tb_dir) if enabled and tensorboard else None
        self._wandb = _wandb_run(run_dir, wandb, wandb_project, config) if enabled and wandb != "off" else None

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
        numbers = {f"{kind}/{k}": v for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for name, value in numbers.items():
                self._tb.add_scalar(name, value, step)
        if self._wandb is not None:
            self._wandb.log(numbers, step=step)
        if console:
            shown = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
            logger.info("[%s] step %d  %s", kind, step, shown)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
