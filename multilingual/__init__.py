"""Multilingual CLIP by knowledge distillation (Multilingual-CLIP; vi_clip's ``CrossLingual`` / ``mCLIP``): a
multilingual text encoder learns to put a sentence where a CLIP teacher's text tower puts its English original; the
result keeps the teacher's image tower (see docs/multilingual.md).

Rooms inside: ``config`` (the typed config of ``vlt5r distill``), ``data`` (parallel-sentence readers), ``losses``
(pure loss functions), ``teacher`` (the teacher's text side and image tower), ``model`` (:class:`MCLIP`, a
CLIP-family model), ``training`` (the engine task, ``train``, ``CrossLingual``), ``evaluation`` (XTD-style
multilingual retrieval). Nothing is imported here.
"""
