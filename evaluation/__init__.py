"""Evaluation of any CLIP-space model (anything with ``encode_image`` / ``encode_text``, or a feature file).

* :mod:`evaluation.scorer` — one scorer interface over OpenAI ``clip`` models, transformers CLIP/SigLIP dirs, any
  ``encode_image``/``encode_text`` object, and pre-extracted HDF5 features; fp32 by default, precision recorded.
* :mod:`evaluation.common` — image references (path + optional crop box), the run log (missing images, malformed
  rows, how many items were scored) and the shared "score every item's images against its texts" step.
* tasks, one small module each with its reporter: :mod:`~evaluation.retrieval`, :mod:`~evaluation.classification`,
  :mod:`~evaluation.aro`, :mod:`~evaluation.sugar_crepe`, :mod:`~evaluation.crepe`, :mod:`~evaluation.svo`,
  :mod:`~evaluation.winoground`, :mod:`~evaluation.vl_checklist`; :mod:`evaluation.tasks` is their registry.
* :mod:`evaluation.perturb` — ARO's caption perturbations behind a part-of-speech tagger interface.
* :mod:`evaluation.results` (JSON schema, tables) and :mod:`evaluation.plots` (bar charts, retrieval HTML page).
"""
