"""ARO's Order-set caption perturbations: what each one may move, seeded reproducibility, the tagger interface."""

from __future__ import annotations

from collections import Counter

import pytest

from evaluation.perturb import ORDER_PERTURBATIONS, Perturber, trigrams, word_tokens
from foundations.errors import UserError

CAPTION = "a big brown dog chases the small red ball across green park"  # 12 words: 4 trigrams
TAGS = {"big": "JJ", "brown": "JJ", "small": "JJ", "red": "JJ", "green": "JJ", "dog": "NN", "ball": "NN",
        "park": "NN", "chases": "VBZ", "across": "IN", "a": "DT", "the": "DT"}


def tagger(text: str) -> list[tuple[str, str]]:
    return [(w, TAGS[w]) for w in text.split()]


def positions(text: str, tags: set[str]) -> list[int]:
    return [i for i, w in enumerate(text.split()) if TAGS[w] in tags]


def test_shuffle_nouns_and_adj_moves_only_nouns_and_adjectives_among_themselves() -> None:
    p = Perturber(tagger, seed=1)
    outs = [p.shuffle_nouns_and_adj(CAPTION) for _ in range(10)]
    for out in outs:
        assert Counter(out.split()) == Counter(CAPTION.split())
        for tags in ({"NN"}, {"JJ"}):  # nouns stay in noun slots, adjectives in adjective slots
            assert positions(out, tags) == positions(CAPTION, tags)
        others = [w for w in out.split() if TAGS[w] not in ("NN", "JJ")]
        assert others == [w for w in CAPTION.split() if TAGS[w] not in ("NN", "JJ")]
    assert any(o != CAPTION for o in outs)


def test_shuffle_allbut_nouns_and_adj_keeps_nouns_and_adjectives_in_place() -> None:
    p = Perturber(tagger, seed=2)
    outs = [p.shuffle_allbut_nouns_and_adj(CAPTION) for _ in range(10)]
    for out in outs:
        kept = [(i, w) for i, w in enumerate(out.split()) if TAGS[w] in ("NN", "JJ")]
        assert kept == [(i, w) for i, w in enumerate(CAPTION.split()) if TAGS[w] in ("NN", "JJ")]
        assert Counter(out.split()) == Counter(CAPTION.split())
    assert any(o != CAPTION for o in outs)


def test_trigram_perturbations() -> None:
    words = CAPTION.split()
    assert trigrams(words)[-1] == ["across", "green", "park"] and len(trigrams(words[:7])[-1]) == 1
    p = Perturber(tagger, seed=3)
    within = p.shuffle_within_trigrams(CAPTION).split()
    for k in range(0, len(words), 3):  # each trigram keeps its words
        assert sorted(within[k:k + 3]) == sorted(words[k:k + 3])
    shuffled = p.shuffle_trigrams(CAPTION).split()
    groups = [" ".join(g) for g in trigrams(shuffled)]
    assert sorted(groups) == sorted(" ".join(g) for g in trigrams(words))


def test_seeded_and_reproducible() -> None:
    runs = [[Perturber(tagger, seed=7).apply(n, CAPTION) for n in ORDER_PERTURBATIONS] for _ in range(2)]
    assert runs[0] == runs[1]
    other = [[Perturber(tagger, seed=s).apply(n, CAPTION) for n in ORDER_PERTURBATIONS] for s in range(8, 12)]
    assert any(o != runs[0] for o in other)


def test_without_tagger_trigrams_use_word_tokens_and_pos_needs_spacy() -> None:
    assert word_tokens("a dog's ball, red.") == ["a", "dog's", "ball", ",", "red", "."]
    p = Perturber(None, seed=0)
    assert sorted(p.shuffle_trigrams("one two three four").split()) == ["four", "one", "three", "two"]
    try:
        import spacy

        spacy.load("en_core_web_sm")
    except (ImportError, OSError):
        with pytest.raises(UserError, match="en_core_web_sm"):
            p.shuffle_nouns_and_adj(CAPTION)
    with pytest.raises(UserError, match="unknown perturbation"):
        p.apply("reverse", CAPTION)
