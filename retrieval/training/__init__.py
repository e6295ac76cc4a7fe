"""Training the joint query encoder DPR-style into CLIP space (issue 4) on the generic engine (:mod:`engine`):
config, data, the retrieval task, evaluation and baselines. The command line is ``vlt5r train``.

    from retrieval.training import TrainConfig, train, evaluate_encoder, baseline_table, load_kb
    result = train(TrainConfig.load("runs/x/config.json"))
"""

from retrieval.training.baselines import baseline_table, clip_vectors, format_table
from retrieval.training.config import (
                                       AdapterConfig,
                                       DataConfig,
                                       EvalConfig,
                                       InputsConfig,
                                       LoopConfig,
                                       ModelConfig,
                                       OptimConfig,
                                       TrainConfig,
)
from retrieval.training.data import KBVectors, load_kb, load_queries, open_features
from retrieval.training.evaluation import evaluate_encoder, evaluate_vectors, flat_index
from retrieval.training.task import RetrievalTask, build_task
from retrieval.training.trainer import TrainResult, train

__all__ = ["AdapterConfig", "DataConfig", "EvalConfig", "InputsConfig", "KBVectors", "LoopConfig", "ModelConfig",
           "OptimConfig", "RetrievalTask", "TrainConfig", "TrainResult", "baseline_table", "build_task",
           "clip_vectors", "evaluate_encoder", "evaluate_vectors", "flat_index", "format_table", "load_kb",
           "load_queries", "open_features", "train"]
