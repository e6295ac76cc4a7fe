"""The VL-T5 model family on current transformers (DESIGN.md §4): config, visual embedding, joint encoder,
tokenizer (loading and training the vocabulary), checkpoint surgery, model inputs as tensors, and the retrieval
query encoder (a pure ``nn.Module``; encoding questions about images of a feature file is
``retrieval.querying.features.encode_with_features``).

    from vlt5 import JointEncoder, QueryEncoder
    enc, report = JointEncoder.from_vlt5_checkpoint("snap/pretrain/VLT5/Epoch30.pth")
    enc = JointEncoder.from_t5("t5-base/", feat_dim=2048)
"""

from foundations.errors import ConfigError
from vlt5.checkpoint import CheckpointError, LoadReport
from vlt5.config import VisualConfig, VLT5Config
from vlt5.inputs import VisualInputConfig
from vlt5.modeling import JointEncoder, JointEncoderOutput, VisualEmbedding
from vlt5.query_encoder import QueryEncoder, QueryEncoderConfig
from vlt5.tokenization import load_tokenizer, train_tokenizer

__all__ = ["CheckpointError", "ConfigError", "JointEncoder", "JointEncoderOutput", "LoadReport", "QueryEncoder",
           "QueryEncoderConfig", "VLT5Config", "VisualConfig", "VisualEmbedding", "VisualInputConfig",
           "load_tokenizer", "train_tokenizer"]
