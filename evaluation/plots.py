"""Pictures of results: a bar chart per benchmark (several models side by side) with matplotlib's Agg backend,
and, for retrieval, a self-contained HTML page of example queries with their top-k: text→image queries with
image thumbnails (inlined as base64 JPEG), image→text queries with captions; hits outlined in green, misses grey.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation.results import display_name
from foundations.images import BadImage, decode_image
from foundations.io import atomic_write_bytes, atomic_write_text


def bar_chart(records: Sequence[dict[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """Grouped bars: one group per metric, one bar per model (values ×100), for records of one task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(m for r in records for m in r["metrics"]))
    models = [f"{display_name(r['model'])} ({r['precision']}, n={r['counts'].get('scored', 0)})" for r in records]
    width = 0.8 / max(1, len(records))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(metrics) * max(1, len(records)) ** 0.5 + 2),
                                    4.6 + 0.2 * len(records)))
    for k, (record, label) in enumerate(zip(records, models)):
        values = [100 * record["metrics"].get(m, float("nan")) for m in metrics]
        xs = [i + (k - (len(records) - 1) / 2) * width for i in range(len(metrics))]
        bars = ax.bar(xs, [0 if math.isnan(v) else v for v in values], width, label=label)
        for bar, v in zip(bars, values):
            ax.annotate("—" if math.isnan(v) else f"{v:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels(metrics, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 108)
    ax.set_ylabel("score (%)")
    ax.set_title(title or records[0]["task"])
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=min(2, len(records)), frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def thumbnail(path: str, size: int = 128) -> str | None:
    """A base64 JPEG data URI of the image at ``path`` (None when it cannot be decoded)."""
    try:
        image = decode_image(path)
    except BadImage:
        return None
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
.query {{ margin: 1em 0; }} .query h3 {{ font-size: 1em; margin: .3em 0; }}
.hits {{ display: flex; gap: 8px; }}
figure {{ margin: 0; padding: 3px; border: 4px solid #ccc; text-align: center; font-size: .75em; }}
figure.hit {{ border-color: #2a2; }}
img {{ display: block; width: 128px; height: 128px; object-fit: cover; }}
img.query-image {{ display: inline-block; width: 64px; height: 64px; vertical-align: middle; }}
figure.text {{ width: 160px; }} figure.text p {{ margin: .2em; min-height: 3em; font-size: 1.1em; }}
</style></head><body>
<h1>{title}</h1>
<p id="summary">{summary}</p>
{queries}
</body></html>
"""


def retrieval_page(record: dict[str, Any], path: str | Path) -> Path:
    """The HTML page of a retrieval record's example queries (``details.examples``)."""
    blocks = []
    for n, ex in enumerate(record.get("details", {}).get("examples", [])):
        figs = []
        for rank, hit in enumerate(ex["hits"], start=1):
            cls = "hit" if hit["hit"] else "miss"
            mark = " ✓" if hit["hit"] else ""
            if "image" in hit:
                src = thumbnail(hit["image"]) or ""
                figs.append(f'<figure class="{cls}"><img alt="{html.escape(Path(hit["image"]).name)}" src="{src}">'
                            f'<figcaption>#{rank} {hit["score"]:.3f}{mark}</figcaption></figure>')
            else:
                figs.append(f'<figure class="{cls} text"><p>{html.escape(hit["text"])}</p>'
                            f'<figcaption>#{rank} {hit["score"]:.3f}{mark}</figcaption></figure>')
        if ex["kind"] == "image→text":
            src = thumbnail(ex["query"]) or ""
            head = (f'<h3>image→text: <img class="query-image" alt="{html.escape(Path(ex["query"]).name)}" '
                    f'src="{src}"></h3>')
        else:
            head = f'<h3>{html.escape(ex["kind"])}: {html.escape(ex["query"])}</h3>'
        blocks.append(f'<div class="query" id="q{n}">{head}<div class="hits">{"".join(figs)}</div></div>')
    m = record["metrics"]
    summary = ", ".join(f"{html.escape(k)} {100 * v:.1f}" for k, v in m.items())
    title = html.escape(f"{record['task']} — {display_name(record['model'])} ({record['precision']})")
    atomic_write_text(path, PAGE.format(title=title, summary=summary, queries="\n".join(blocks)))
    return Path(path)
