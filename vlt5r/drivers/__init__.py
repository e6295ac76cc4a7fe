"""One thin driver per ``vlt5r`` subcommand: flags -> a typed config or library call -> a printed summary.

Each module has ``build_parser()`` and ``main(argv=None) -> exit code`` (wrapped by
:func:`foundations.cli.command`, so usage errors exit 2, user errors exit 1, bugs show their traceback). The old
entry points (``python feature_extraction/clip_prepro_feats.py``, ``python -m retrieval.train``, ...) are shims
that call these ``main`` functions.
"""
