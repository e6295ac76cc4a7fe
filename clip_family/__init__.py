"""CLIP-family models and training: CLIP, SigLIP, LiT, SigLiT (see docs/clip_family.md).

Rooms inside: ``losses`` (pure loss functions), ``config`` + ``configs/`` (typed model configs, the OpenAI
architectures), ``model`` (the one model file and its variant constructors), ``inputs`` (image inputs of
``encode_image``), ``data`` (folder / parquet / CSV / webdataset readers), ``training`` (the engine task and
``train``), ``zeroshot`` (evaluation), ``export`` (OpenAI ``.pt``), ``digits`` (the learning proof's data).
Nothing is imported here, so ``import clip_family.losses`` stays light.
"""
