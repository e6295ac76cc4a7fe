"""Caption perturbations of ARO's COCO-Order / Flickr30k-Order (after O'Connor & Andreas 2021, as used by
mertyg/vision-language-models-are-bows): shuffle nouns and adjectives, shuffle all but nouns and adjectives,
shuffle within trigrams, shuffle trigrams.

Parts of speech come from a :data:`Tagger` — any callable ``text -> [(token, Penn Treebank tag)]``. The default
is :class:`SpacyTagger` (``en_core_web_sm``, as the reference; install the pipeline yourself: it is not on the
package index here); tests pass tags in directly. Trigram perturbations need only tokens (the tagger's, or a
regex word tokenizer when no tagger is given). Every perturbation draws from one seeded generator, so a
:class:`Perturber` with the same seed gives the same captions.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from foundations.errors import UserError

Tagger = Callable[[str], list[tuple[str, str]]]
NOUN_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS"})
ADJ_TAGS = frozenset({"JJ", "JJR", "JJS"})
ORDER_PERTURBATIONS = ("shuffle_nouns_and_adj", "shuffle_allbut_nouns_and_adj", "shuffle_within_trigrams",
                       "shuffle_trigrams")


class SpacyTagger:
    """spaCy's ``en_core_web_sm`` (loaded on first use): ``python -m spacy download en_core_web_sm``."""

    def __init__(self, pipeline: str = "en_core_web_sm") -> None:
        self.pipeline, self._nlp = pipeline, None

    def __call__(self, text: str) -> list[tuple[str, str]]:
        if self._nlp is None:
            try:
                import spacy

                self._nlp = spacy.load(self.pipeline)
            except (ImportError, OSError) as exc:
                raise UserError(f"part-of-speech tags need spaCy's {self.pipeline} pipeline ({exc}); install spacy "
                                f"and `python -m spacy download {self.pipeline}`, or pass caption_options") from exc
        return [(t.text, t.tag_) for t in self._nlp(text)]


def word_tokens(text: str) -> list[str]:
    return re.findall(r"\w+(?:'\w+)?|[^\w\s]", text)


def trigrams(tokens: list[str]) -> list[list[str]]:
    return [tokens[i:i + 3] for i in range(0, len(tokens), 3)]


class Perturber:
    """The four Order perturbations with one seeded RNG; ``tagger`` gives (token, tag) pairs."""

    def __init__(self, tagger: Tagger | None = None, seed: int = 0) -> None:
        self.tagger = tagger
        self.rng = random.Random(seed)

    def _tagged(self, text: str) -> list[tuple[str, str]]:
        if self.tagger is None:
            self.tagger = SpacyTagger()
        return self.tagger(text)

    def _shuffle_where(self, tokens: list[str], positions: list[int]) -> list[str]:
        values = [tokens[i] for i in positions]
        self.rng.shuffle(values)
        out = list(tokens)
        for i, v in zip(positions, values):
            out[i] = v
        return out

    def shuffle_nouns_and_adj(self, text: str) -> str:
        tagged = self._tagged(text)
        tokens = [t for t, _ in tagged]
        tokens = self._shuffle_where(tokens, [i for i, (_, tag) in enumerate(tagged) if tag in NOUN_TAGS])
        tokens = self._shuffle_where(tokens, [i for i, (_, tag) in enumerate(tagged) if tag in ADJ_TAGS])
        return " ".join(tokens)

    def shuffle_allbut_nouns_and_adj(self, text: str) -> str:
        tagged = self._tagged(text)
        keep = NOUN_TAGS | ADJ_TAGS
        return " ".join(self._shuffle_where([t for t, _ in tagged],
                                            [i for i, (_, tag) in enumerate(tagged) if tag not in keep]))

    def _tokens(self, text: str) -> list[str]:
        return [t for t, _ in self.tagger(text)] if self.tagger is not None else word_tokens(text)

    def shuffle_within_trigrams(self, text: str) -> str:
        groups = trigrams(self._tokens(text))
        for g in groups:
            self.rng.shuffle(g)
        return " ".join(" ".join(g) for g in groups)

    def shuffle_trigrams(self, text: str) -> str:
        groups = trigrams(self._tokens(text))
        self.rng.shuffle(groups)
        return " ".join(" ".join(g) for g in groups)

    def apply(self, name: str, text: str) -> str:
        if name not in ORDER_PERTURBATIONS:
            raise UserError(f"unknown perturbation {name!r}; one of {', '.join(ORDER_PERTURBATIONS)}")
        return getattr(self, name)(text)
