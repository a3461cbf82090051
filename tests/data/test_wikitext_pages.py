"""WikiText pages equal lm-eval's document-level pages (`EleutherAI/wikitext_document_level`, the dataset its wikitext
task scores) byte for byte, on the real validation and test text.

The reference below is written from that builder's description, not from tnl's code: split the raw file at "\\n";
a line is a page title when, after "= = =" -> "===" and "= =" -> "==", it strips to "= ... ="; each page is its
lines joined by "\\n", from a title up to the line before the next; pages before the last are kept only when not
blank.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tnl.data import load_documents

ROOT = Path(__file__).resolve().parents[2]


def builder_pages(raw: str) -> list[str]:
    lines = raw.split("\n")

    def titled(line: str) -> bool:
        s = line.replace("= = =", "===").replace("= =", "==").strip()
        return s[:2] == "= " and s[-2:] == " ="

    starts = [i for i, line in enumerate(lines) if titled(line)]
    bounds = list(zip([0, *starts], [*starts, len(lines)]))
    pages = ["\n".join(lines[a:b]) for a, b in bounds if b > a]
    return [p for p in pages[:-1] if p.strip()] + pages[-1:]


def _pages(data_dir: Path, split: str) -> list[str]:
    cfg = OmegaConf.load(ROOT / "configs/data/wikitext103.yaml")
    cfg.path = str(data_dir)
    return list(load_documents(cfg, split, detokenized=False)["text"])


# split: (file, pages, bytes, words) of lm-eval's document-level WikiText-2 raw (WT-2 and WT-103 share these texts)
COUNTS = {"validation": ("wiki.valid.raw", 60, 1_146_785, 214_006), "test": ("wiki.test.raw", 62, None, None)}


@pytest.mark.parametrize("split", ["validation", "test"])
def test_pages_equal_the_document_level_builder(data_dir, split):
    name, n_pages, n_bytes, n_words = COUNTS[split]
    raw = (data_dir / "wikitext-2-raw" / name).read_text(encoding="utf-8")
    expected = builder_pages(raw)
    got = _pages(data_dir, split)
    assert len(got) == len(expected) == n_pages
    assert got == expected  # byte for byte, page by page
    if n_bytes is not None:  # the counts lm-eval's wikitext task divides by on the validation split
        assert sum(len(p.encode("utf-8")) for p in got) == n_bytes
        assert sum(len(re.split(r"\s+", p)) for p in got) == n_words


def test_hub_rows_give_the_same_pages(data_dir):
    """The Hugging Face line-level dataset stores each raw line with its newline and a blank (" ") line as "";
    pages from such rows equal the builder's pages of the raw file."""
    from tnl.data import split_articles

    raw = (data_dir / "wikitext-2-raw" / "wiki.valid.raw").read_text(encoding="utf-8")
    rows = [line + "\n" if line.strip() else "" for line in raw.split("\n")[:-1]]
    assert split_articles(rows) == builder_pages(raw)
