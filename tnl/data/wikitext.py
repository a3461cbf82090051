"""WikiText specifics: article boundaries and the detokenizer used by lm-evaluation-harness.

WikiText lines come as " = Title = " for an article, " = = Section = = " for sections. An article
(one document) runs from its title line to the line before the next title.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_TITLE = re.compile(r"^ = [^=].* = \s*$")


def is_article_title(line: str) -> bool:
    """True for a top-level ` = Title = ` line (not ` = = Section = = `)."""
    return bool(_TITLE.match(line))


def split_articles(lines: Iterable[str]) -> list[str]:
    """Group WikiText lines (each ending in "\\n", as HF's rows do) into one string per article."""
    docs: list[list[str]] = []
    current: list[str] = []
    for line in lines:
        if is_article_title(line):
            if any(x.strip() for x in current):
                docs.append(current)
            current = []  # blank lines before the first title belong to no article
        current.append(line)
    if any(x.strip() for x in current):
        docs.append(current)
    return ["".join(doc) for doc in docs]


# Undo WikiText's tokenization the way lm-evaluation-harness's wikitext task does before scoring, in the
# same order, so that our word perplexities compare with published ones.
_NUMBER_AND_PUNCT = [
    (" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."),
    (" : ", ": "), (" ; ", "; "), (" . ", ". "), (" ! ", "! "), (" ? ", "? "), (" , ", ", "),
]
_BRACKETS = [
    (re.compile(r"\(\s*([^\)]*?)\s*\)"), r"(\1)"),
    (re.compile(r"\[\s*([^\]]*?)\s*\]"), r"[\1]"),
    (re.compile(r"{\s*([^}]*?)\s*}"), r"{\1}"),
    (re.compile(r"\"\s*([^\"]*?)\s*\""), r'"\1"'),
    (re.compile(r"'\s*([^']*?)\s*'"), r"'\1'"),
]
_MISC = [
    ("= = = =", "===="), ("= = =", "==="), ("= =", "=="), (" \u00b0 ", "\u00b0"),
    (" \n", "\n"), ("\n ", "\n"), (" N ", " 1 "), (" 's", "'s"),
]
# lm-eval's digit-contraction rule is written with literal slashes, so it only ever rewrites the text
# "/' <digit>/"; it is kept as is so that scores stay comparable.
_QUIRK = re.compile(r"/' [0-9]/")


def detokenize(text: str) -> str:
    """WikiText detokenizer: contractions, number separators, punctuation, brackets, quotes, headings."""
    text = text.replace("s '", "s'")
    text = _QUIRK.sub("/'[0-9]/", text)
    for old, new in _NUMBER_AND_PUNCT:
        text = text.replace(old, new)
    for pattern, repl in _BRACKETS:
        text = pattern.sub(repl, text)
    for old, new in _MISC:
        text = text.replace(old, new)
    return text
