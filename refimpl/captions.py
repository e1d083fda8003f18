"""The digit captions that the text-to-image pages share: every caption names exactly one digit of the 8x8 digits.

- Word captions (GLIDE, LDM and its fine-tunes): four English templates filled in with the digit's number word or
  numeral, a word-level tokenizer over a fixed vocabulary (<start>, the words, <pad> to a fixed length), random
  captions per label and caption dropout to the empty caption (the null condition of classifier-free guidance).
- Bilingual captions (CLIP, unCLIP, Imagen): four English and four Chinese templates; their tokenizers are the
  papers' own (CLIP: one token per character, refimpl.clip.tokenize; Imagen: the frozen T5's).
"""

from __future__ import annotations

from functools import lru_cache

import torch

from refimpl.core import LineageError

# --8<-- [start:captions]
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: caption templates; {w} is a number word ("three") or a numeral ("3"): every caption names exactly one digit
TEMPLATES = ("{w}", "the digit {w}", "a handwritten {w}", "the number {w}")
PAD, START = "<pad>", "<start>"
VOCAB = (PAD, START, "the", "digit", "a", "handwritten", "number", *NUMBER_WORDS, *(str(k) for k in range(10)))
MAX_LEN = 5  # <start> + at most 3 words, padded to a fixed length (GLIDE: a fixed context of K tokens)


def captions(label: int) -> list[str]:
    """Every caption of digit ``label``: each template with the number word and with the numeral."""
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 9:
        raise LineageError(f"digit label must be an integer 0..9, got {label!r}")
    return [t.format(w=w) for w in (NUMBER_WORDS[label], str(label)) for t in TEMPLATES]


def tokenize(texts: list[str]) -> torch.Tensor:
    """Word-level tokens ``(len(texts), MAX_LEN)``: <start>, the lower-cased words, then <pad>. The empty
    caption "" is <start> and padding only (the null condition of classifier-free guidance)."""
    rows = []
    for text in texts:
        words = text.lower().split()
        unknown = [w for w in words if w not in VOCAB[2:]]
        if unknown:
            raise LineageError(f"unknown word {unknown[0]!r} in caption {text!r} (the vocabulary has "
                               f"{len(VOCAB)} tokens: {' '.join(VOCAB[2:])})")
        if len(words) > MAX_LEN - 1:
            raise LineageError(f"caption {text!r} has {len(words)} words; at most {MAX_LEN - 1} fit")
        ids = [1] + [VOCAB.index(w) for w in words]
        rows.append(ids + [0] * (MAX_LEN - len(ids)))
    return torch.tensor(rows, dtype=torch.long).reshape(len(texts), MAX_LEN)


def detokenize(tokens: torch.Tensor) -> list[str]:
    """Inverse of :func:`tokenize` (on lower-case captions with single spaces)."""
    return [" ".join(VOCAB[i] for i in row.tolist() if i > 1) for row in tokens]


@lru_cache(maxsize=1)
def _caption_table() -> torch.Tensor:
    return torch.stack([tokenize(captions(k)) for k in range(10)])


def random_captions(labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Tokens of one caption per label, the caption drawn uniformly from :func:`captions` (label)."""
    table = _caption_table()  # (10, captions per digit, MAX_LEN)
    pick = torch.randint(0, table.shape[1], (labels.shape[0],), generator=generator)
    return table[labels.cpu(), pick]


def drop_captions(tokens: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """GLIDE Sec. 4.2: replace each caption by the empty sequence with probability ``p``."""
    drop = torch.rand(tokens.shape[0], generator=generator) < p
    return torch.where(drop[:, None].to(tokens.device), tokenize([""]).to(tokens.device), tokens)
# --8<-- [end:captions]


# --8<-- [start:bilingual]
ZH_WORDS = ("零", "一", "二", "三", "四", "五", "六", "七", "八", "九")  # NUMBER_WORDS in Chinese
#: caption templates per language; {en} / {zh} is the digit's name, {d} the numeral "3"
BILINGUAL_TEMPLATES = {
    "en": ("a photo of the digit {en}", "the number {en}", "a handwritten {d}", "{en}"),
    "zh": ("数字{zh}的照片", "数字{zh}", "手写的{d}", "{zh}"),
}
TEMPLATE_SETS = ("en", "zh", "both")  # zero-shot prompt sets; "both" ensembles all eight templates


def templates(which: str = "both") -> tuple[str, ...]:
    """The bilingual templates of one language ("en", "zh") or of both."""
    if which not in TEMPLATE_SETS:
        raise LineageError(f"unknown template set {which!r} (choose from {', '.join(TEMPLATE_SETS)})")
    return BILINGUAL_TEMPLATES["en"] + BILINGUAL_TEMPLATES["zh"] if which == "both" else BILINGUAL_TEMPLATES[which]


def caption(template: str, label: int) -> str:
    """A bilingual ``template`` filled in with digit ``label``: every caption names exactly one digit."""
    return template.format(en=NUMBER_WORDS[label], zh=ZH_WORDS[label], d=label)
# --8<-- [end:bilingual]
