"""WikiText specifics: article pages and the detokenizer used by lm-evaluation-harness.

WikiText lines come as " = Title = " for an article, " = = Section = = " for sections. A page (one document) is the
text from one title line up to the line before the next title, without the newline that ends that last line: the
document-level pages of `EleutherAI/wikitext_document_level`, which lm-eval's wikitext task scores, byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Names how split_articles cuts pages, for cache keys: pages cut another way are other text.
PAGE_FORMAT = "document-level pages"


def is_article_title(line: str) -> bool:
    """True for a top-level ` = Title = ` line (not ` = = Section = = `), by the document-level builder's test:
    with runs of "= =" joined, the stripped line starts with "= " and ends with " ="."""
    joined = line.replace("= = =", "===").replace("= =", "==").strip()
    return joined.startswith("= ") and joined.endswith(" =")


def split_articles(lines: Iterable[str]) -> list[str]:
    """Group WikiText rows into pages. Rows are lines with their "\n" (local files read line by line); an empty row
    is a blank line of the Hugging Face line-level dataset, which stores the raw files' " " lines as "" (restored
    here, so hub and local text give the same pages). Text before the first title is a page of its own unless blank;
    the last page keeps the file's final newline, as the builder's does."""
    pages: list[list[str]] = [[]]
    for row in lines:
        line = row if row else " \n"
        if is_article_title(line) and pages[-1]:
            pages.append([])
        pages[-1].append(line)
    out = []
    for i, page in enumerate(pages):
        text = "".join(page)
        if i < len(pages) - 1 and text.endswith("\n"):  # that newline separates this page from the next title
            text = text[:-1]
        if text.strip():
            out.append(text)
    return out


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
