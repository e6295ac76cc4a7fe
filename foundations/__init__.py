"""Foundations every room of the toolkit imports: error types, CLI plumbing, strict configs, atomic IO, device
choice, one image decoder, one JSONL reader, row normalisation.

Dependencies point one way: ``vlt5r`` (the command and its drivers) -> rooms (``feature_extraction``, ``vlt5``,
``adapters``, ``retrieval``, ``engine``) -> ``foundations``. Nothing here imports a room. Heavy libraries (torch,
PIL, numpy) are imported only by the modules that need them, so ``foundations.errors`` and ``foundations.cli`` stay
cheap to import for ``vlt5r --help``.
"""
