"""The training engine every trainer of the toolkit runs on (retrieval now; CLIP-family and distillation next).

A trainer writes a :class:`~engine.task.Task` (model + loss + data + evaluation) and nests
:class:`~engine.config.OptimConfig` / :class:`~engine.config.LoopConfig` in its config; :func:`~engine.fit.fit`
is the one loop (setup -> resume-or-init -> fit -> validate -> test). This package imports no room of the
toolkit (retrieval/, vlt5/, feature_extraction/): only foundations, torch and the standard tools.

    env = engine.setup(cfg.loop, cfg.optim)
    result = engine.fit(MyTask(...).to(env.device), cfg.loop, cfg.optim, cfg.to_dict(), env)
    engine.teardown(env)
"""

from engine.config import LoopConfig, OptimConfig
from engine.distributed import DistEnv
from engine.errors import user_errors
from engine.fit import FitResult, fit, setup, teardown
from engine.task import Task, move_to

__all__ = ["DistEnv", "FitResult", "LoopConfig", "OptimConfig", "Task", "fit", "move_to", "setup", "teardown",
           "user_errors"]
