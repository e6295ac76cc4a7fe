"""List what to encode: an image folder, an image list, or a JSONL of texts; then cut this shard's block.

The reader stage of clip-retrieval's split (reader -> mapper -> writer).  Listing is cheap and happens in the
main process: it fixes the *canonical item order* that sharding, batching, resume and merging all rely on.

* ``--images DIR``: every file below DIR with a common image suffix, sorted by relative POSIX path;
  id = relative path without suffix (``cats/001.jpg`` -> ``cats/001``). Symlinked folders are followed, each
  folder listed once (a symlink loop is skipped with a reason); a file name that is not UTF-8 gets a reversible
  id with ``\\xNN`` for each undecodable byte (:func:`text_of_name`).
* ``--image-list FILE``: lines ``path`` or ``id<TAB>path``, in file order; relative paths are relative to the
  list file's folder; a ``path``-only line gets the id ``path`` without its suffix.
* ``--texts FILE.jsonl``: ``{"id", "text"}`` per line, in file order; only byte offsets are kept, workers read
  the text back, so millions of passages do not sit in the main process.

Problems found while listing (duplicate ids, malformed JSON lines, missing fields) become :class:`Skip`
records; they never stop the run.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from feature_extraction.config import ShardSpec

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
                            ".pbm", ".pnm", ".jfif"})


@dataclass(frozen=True)
class Skip:
    """An item that was not encoded. ``category`` is a short fixed phrase (the summary groups by it)."""

    item_id: str
    category: str
    detail: str = ""
    source: str = ""


@dataclass
class Listing:
    """Items in canonical order. ``sources[i]`` is a path (images) or a byte offset into ``text_file``."""

    modality: str
    ids: list[str] = field(default_factory=list)
    sources: list[str | int] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    text_file: Path | None = None

    def add(self, item_id: str, source: str | int, where: str, first_seen: dict[str, str]) -> None:
        if item_id in first_seen:
            self.skipped.append(Skip(item_id, "duplicate id", f"first seen at {first_seen[item_id]}", where))
            return
        first_seen[item_id] = where
        self.ids.append(item_id)
        self.sources.append(source)

    def shard(self, spec: ShardSpec, batch_size: int) -> Listing:
        """Contiguous block ``spec.shard_id``; block edges fall on whole batches, so every shard computes exactly
        the batches an unsharded run would and shards merged in order equal the unsharded file."""
        if spec.num_shards == 1:
            return self
        n_batches = -(-len(self.ids) // batch_size)
        first = spec.shard_id * n_batches // spec.num_shards * batch_size
        last = (spec.shard_id + 1) * n_batches // spec.num_shards * batch_size
        listing_skips = list(self.skipped) if spec.shard_id == 0 else []  # reported once, by shard 0
        return Listing(self.modality, self.ids[first:last], self.sources[first:last], listing_skips, self.text_file)


def text_of_name(name: str) -> str:
    """A file name as valid UTF-8 text: identical for a UTF-8 name; each byte of a name that is not UTF-8 (which
    Python holds as a lone surrogate U+DC80..U+DCFF, PEP 383) becomes the four characters ``\\xNN``, so
    ``b"caf\\xe9.jpg"`` (Latin-1) gets the id ``caf\\xe9``. Reversible: :func:`name_of_text`."""
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte (e.g. from JSON text)
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def name_of_text(text: str) -> bytes:
    """The file name bytes an id made by :func:`text_of_name` came from (``\\xNN`` back to the byte NN)."""
    return re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), text.encode("utf-8"))


def walk_images(root: Path) -> tuple[list[str], list[Skip]]:
    """Relative POSIX paths of every image file below ``root``, following symlinked folders, and the folders
    skipped. A folder is listed once, by ``(st_dev, st_ino)``: a symlink back to an ancestor (``self -> .``,
    ``sub/up -> ..``) is skipped as ``symlink loop``, a second link to a folder already listed as ``repeated
    folder``; real folders are walked before linked ones, so a folder is listed under its real path. An unreadable
    folder is skipped too. Skipped folders have the id ``REL/`` (an image id never ends in ``/``)."""
    found: list[str] = []
    skipped: list[Skip] = []
    visited: dict[tuple[int, int], str] = {}
    real: list[tuple[str, str]] = [(str(root), "")]  # (path, rel) still to walk: real folders first,
    linked: list[tuple[str, str]] = []  # then linked ones, in sorted order
    while real or linked:
        path, rel = real.pop() if real else linked.pop(0)
        try:
            st = os.stat(path)
            key = (st.st_dev, st.st_ino)
            if key in visited:
                first = visited[key]
                loop = first == "" or rel.startswith(first + "/")
                detail = f"links to {'the root folder' if first == '' else first + '/'}, already listed"
                skipped.append(Skip(rel + "/", "symlink loop" if loop else "repeated folder", detail, rel))
                continue
            visited[key] = rel
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            skipped.append(Skip(rel + "/", "unreadable folder", exc.strerror or str(exc), rel))
            continue
        subdirs: list[tuple[str, str]] = []
        for entry in entries:
            entry_rel = f"{rel}/{entry.name}" if rel else entry.name
            try:
                is_dir = entry.is_dir()  # follows symlinks; a broken link is a file (skipped later as unreadable)
            except OSError:
                is_dir = False
            if is_dir:
                (linked if entry.is_symlink() else subdirs).append((entry.path, entry_rel))
            elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(entry_rel)
        real.extend(reversed(subdirs))
        linked.sort(key=lambda item: item[1])
    return found, skipped


def list_image_dir(root: Path) -> Listing:
    """Every image below ``root`` (:func:`walk_images`); id = relative path without suffix, as UTF-8 text
    (:func:`text_of_name`)."""
    listing, seen = Listing("image"), {}
    found, listing.skipped = walk_images(root)
    for rel in sorted(found):
        text = text_of_name(rel)
        listing.add(str(Path(text).with_suffix("").as_posix()), str(root / rel), text, seen)
    logger.info("%s: %d images", root, len(listing.ids))
    return listing


def list_image_file(list_file: Path) -> Listing:
    listing, seen = Listing("image"), {}
    base = list_file.resolve().parent
    with open(list_file, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            item_id, _, path = line.partition("\t") if "\t" in line else ("", "", line)
            item_id = item_id or Path(path).with_suffix("").as_posix()
            listing.add(item_id, str(base / path), f"{list_file.name}:{line_no}", seen)
    return listing


def list_texts(jsonl: Path) -> Listing:
    listing, seen = Listing("text", text_file=jsonl), {}
    offset = 0
    with open(jsonl, "rb") as fh:
        for line_no, raw in enumerate(fh, 1):
            where, start, offset = f"{jsonl.name}:{line_no}", offset, offset + len(raw)
            if not raw.strip():
                continue
            problem = text_record_problem(raw)
            if problem is not None:
                listing.skipped.append(Skip(f"<line {line_no}>", problem[0], problem[1], where))
                continue
            listing.add(text_of_name(str(json.loads(raw)["id"])), start, where, seen)
    return listing


def text_record_problem(raw: bytes) -> tuple[str, str] | None:
    """``(category, detail)`` when a JSONL line cannot be used, else ``None``."""
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return "malformed json", str(exc)
    if not isinstance(record, dict):
        return "malformed json", f"expected an object, got {type(record).__name__}"
    if not isinstance(record.get("id"), (str, int)) or isinstance(record.get("id"), bool) or record["id"] == "":
        return "missing id", "needs a non-empty string or integer 'id'"
    if not isinstance(record.get("text"), str) or not record["text"].strip():
        return "missing text", "needs a non-empty string 'text'"
    return None


def read_text(jsonl: Path, offset: int) -> str:
    with open(jsonl, "rb") as fh:
        fh.seek(offset)
        return json.loads(fh.readline())["text"]


def list_inputs(images: Path | None, image_list: Path | None, texts: Path | None) -> Listing:
    if images is not None:
        return list_image_dir(Path(images))
    if image_list is not None:
        return list_image_file(Path(image_list))
    assert texts is not None
    return list_texts(Path(texts))
