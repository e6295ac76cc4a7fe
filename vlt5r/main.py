"""The ``vlt5r`` command: one subcommand per job, each a thin driver in :mod:`vlt5r.drivers`.

The registry below is a dict literal of lazily imported drivers (``vlt5r --help`` imports none of them, so it is
instant). Every driver follows one convention (:func:`foundations.cli.run`): usage errors exit 2 with one line,
user errors (a bad file, id or value) exit 1 with one line naming it, anything else is a bug with its traceback.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# name -> (driver module, one line for ``vlt5r --help``); the order is the order of the pipeline.
COMMANDS: dict[str, tuple[str, str]] = {
    "extract": ("vlt5r.drivers.extract", "CLIP features (fc + grid) of images or texts into one HDF5 file"),
    "merge": ("vlt5r.drivers.merge", "merge feature-file shards into one file"),
    "export-vladapter": ("vlt5r.drivers.export_vladapter", "write a feature file in VL_adapter's layout"),
    "tokenizer": ("vlt5r.drivers.tokenizer", "train a T5-style sentencepiece tokenizer on a corpus"),
    "train": ("vlt5r.drivers.train", "train the joint query encoder into CLIP space (DPR-style)"),
    "clip-train": ("vlt5r.drivers.clip_train", "train a CLIP / SigLIP / LiT / SigLiT model on image–caption data"),
    "mine-negclip": ("vlt5r.drivers.mine_negclip", "NegCLIP hard negatives: swapped-span captions, nearest images"),
    "distill": ("vlt5r.drivers.distill", "distil a multilingual student from a CLIP teacher into an mCLIP"),
    "baselines": ("vlt5r.drivers.baselines", "CLIP image-only / text-only baseline table for a queries file"),
    "mine-negatives": ("vlt5r.drivers.mine_negatives", "mine hard negatives for training queries"),
    "build-index": ("vlt5r.drivers.build_index", "build a faiss index over KB features (or --sizing)"),
    "search": ("vlt5r.drivers.search", "search an index: one question + image, or a queries file to a TREC run"),
    "evaluate": ("vlt5r.drivers.evaluate", "score TREC runs with ranx metrics and significance tests"),
    "eval": ("vlt5r.drivers.eval", "zero-shot retrieval/classification + ARO, SugarCREPE, Winoground... of a model"),
    "report": ("vlt5r.drivers.report", "tables, bar charts and retrieval pages of eval results / comparison.json"),
    "fuse": ("vlt5r.drivers.fuse", "ViQuAE late fusion of runs: fit weights on dev, apply them"),
    "import": ("vlt5r.drivers.importers", "bring DPR / ViQuAE / KILT data into the toolkit's formats"),
    "serve": ("vlt5r.drivers.serve", "HTTP server + web page over an index and an encoder"),
    "demo": ("vlt5r.drivers.demo", "the whole pipeline on generated demo data"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: vlt5r COMMAND [options]      (vlt5r COMMAND -h for the options and examples of one)", "",
             "Multimodal retrieval into CLIP space with VL-T5 joint encoders (vlt5-retrieval).", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    driver = importlib.import_module(COMMANDS[name][0])
    return driver.main(rest)


if __name__ == "__main__":
    sys.exit(main())
