"""Training the joint query encoder DPR-style into CLIP space (issue 4): config, data, task, loop, checkpoints,
distributed helpers, evaluation and baselines. The command line is ``python -m retrieval.train``.

    from retrieval.training import TrainConfig, train, evaluate_encoder, baseline_table, load_kb
    result = train(TrainConfig.load("runs/x/config.json"))
"""

from retrieval.training.baselines import baseline_table, clip_vectors, format_table
from retrieval.training.config import (DataConfig, EvalConfig, LoopConfig, ModelConfig, OptimConfig,
                                       TrainConfig)
from retrieval.training.data import KBVectors, load_kb, load_queries, open_features
from retrieval.training.evaluation import evaluate_encoder, evaluate_vectors, flat_index
from retrieval.training.loop import TrainResult, UserError, train

__all__ = ["DataConfig", "EvalConfig", "KBVectors", "LoopConfig", "ModelConfig", "OptimConfig", "TrainConfig",
           "TrainResult", "UserError", "baseline_table", "clip_vectors", "evaluate_encoder", "evaluate_vectors",
           "flat_index", "format_table", "load_kb", "load_queries", "open_features", "train"]
