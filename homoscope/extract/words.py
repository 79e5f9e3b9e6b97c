"""Word and token units: rows that line up across models through character offsets.

Models tokenize the same text differently, so word-level rows (Wu et al. 2020, "Similarity Analysis
of Contextual Word Representation Models", ACL) are aligned on the text itself:

1. **Words** are character spans of each text, split by a rule that knows nothing of any model
   (:func:`split_words`):

   - ``punctuation="attach"`` (default): a word is a maximal run of non-whitespace characters
     (``str.split()`` semantics, Unicode whitespace), so ``"63,700"`` and ``"end."`` are one word each;
   - ``punctuation="split"``: a word is a maximal run of word characters (letters, digits, ``_``,
     combining marks), and every other non-whitespace character is a word on its own, so
     ``"63,700"`` gives ``63``, ``,``, ``700``.

2. **Token -> word map** (:func:`word_map`): a token belongs to every word that holds one of the
   characters of its offset span. Whitespace belongs to no word, so the leading space that byte-level
   BPE and SentencePiece tokens carry is ignored, and a token made only of spaces belongs to no word;
   special tokens (BOS/CLS/SEP, empty spans) belong to no word; a token that straddles two words
   belongs to both.

3. **Plan** (:func:`plan_words`): the rows every model yields, in corpus order (text, then word),
   optionally sampled down to ``max_rows`` with a seed. It depends on the texts and the rule only,
   so all models share it; its :meth:`WordPlan.digest` goes into the representation store key.

4. **Encoding** (:func:`encode_words`): per model, the token group of each planned word. A word is
   *covered* when it has at least one token and truncation to ``max_length`` cut none of its tokens.
   The study drops a word that any model leaves uncovered, for all models alike, and reports the
   count, so rows stay aligned.

The **token** unit (:func:`plan_tokens`) is one row per token; it is defined only between models
whose tokenizers give identical token sequences on the corpus (:func:`check_same_tokens` raises
otherwise and suggests the word unit). Special positions are excluded unless asked for.

Every function here needs a fast (``tokenizers``-backed) tokenizer: slow tokenizers give no offsets.
"""
from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from .._spelling import typed

PUNCTUATION = ("attach", "split")
ROW_POOLINGS = ("mean", "first", "last")
SPECIAL_TOKENS = ("exclude", "include")
DEFAULT_MAX_ROWS = 20_000
WORD_RULE_VERSION = 1


# ---------------------------------------------------------------------------------------------- words
def _is_word_char(c: str) -> bool:
    return c.isalnum() or c == "_" or unicodedata.category(c).startswith("M")


def split_words(text: str, punctuation: str = "attach") -> list[tuple[int, int]]:
    """Split ``text`` into words; return their character spans ``(start, end)``, end exclusive.

    Args:
        text: one text.
        punctuation: ``attach`` (default): maximal runs of non-whitespace characters;
            ``split``: maximal runs of word characters (``str.isalnum``, ``_``, combining marks)
            plus every other non-whitespace character as a word of its own.

    Returns:
        spans in text order; whitespace (``str.isspace``) is in no span.

    Raises:
        ValueError: ``punctuation`` not in :data:`PUNCTUATION`.

    Example: ``split_words("census in 1850 was 63,700")`` gives 5 spans; with
    ``punctuation="split"`` the last word becomes ``63``, ``,``, ``700`` (7 spans).
    """
    if punctuation not in PUNCTUATION:
        raise ValueError(f"punctuation={punctuation!r} is not one of {', '.join(PUNCTUATION)}")
    spans: list[tuple[int, int]] = []
    start = None
    for i, c in enumerate(text):
        if c.isspace():
            if start is not None:
                spans.append((start, i))
                start = None
            continue
        if punctuation == "split" and not _is_word_char(c):
            if start is not None:
                spans.append((start, i))
                start = None
            spans.append((i, i + 1))
            continue
        if start is None:
            start = i
    if start is not None:
        spans.append((start, len(text)))
    return spans


def word_map(
    offsets: list[tuple[int, int]],
    words: list[tuple[int, int]],
    special_mask: list[int] | None = None,
) -> list[tuple[int, ...]]:
    """The words each token belongs to, from the tokenizer's character offsets.

    Args:
        offsets: per token its ``(start, end)`` character span in the text (``offset_mapping`` of
            a fast tokenizer); ``(0, 0)`` for special tokens.
        words: word spans from :func:`split_words` (disjoint, whitespace-free).
        special_mask: optional per-token 1 for special tokens, which belong to no word.

    Returns:
        per token a sorted tuple of word indices: ``()`` for special tokens and tokens that cover
        only whitespace, one index for most tokens, several for a token that straddles words.

    Example: for "the cat", offsets ``[(0, 3), (3, 7)]`` (leading space kept) and
    ``[(0, 3), (4, 7)]`` both give ``[(0,), (1,)]``.
    """
    length = max([e for _, e in offsets] + [e for _, e in words] + [0])
    owner = np.full(length, -1, dtype=np.int64)
    for w, (s, e) in enumerate(words):
        owner[s:e] = w
    result: list[tuple[int, ...]] = []
    for t, (s, e) in enumerate(offsets):
        if (special_mask is not None and special_mask[t]) or e <= s:
            result.append(())
            continue
        hit = owner[s:e]
        hit = hit[hit >= 0]
        result.append(tuple(int(x) for x in np.unique(hit)))
    return result


def word_groups(token_words: list[tuple[int, ...]], n_words: int) -> list[list[int]]:
    """Invert a :func:`word_map`: per word the ascending token positions that belong to it."""
    groups: list[list[int]] = [[] for _ in range(n_words)]
    for t, ws in enumerate(token_words):
        for w in ws:
            groups[w].append(t)
    return groups


# ---------------------------------------------------------------------------------------------- plans
def sample_rows(total: int, max_rows: int, seed: int) -> np.ndarray:
    """Sorted row indices: all of ``range(total)`` if ``max_rows`` is 0 or ``>= total``, else
    ``max_rows`` of them drawn without replacement by ``numpy.random.default_rng(seed)``."""
    if max_rows < 0:
        raise ValueError(f"max_rows={max_rows!r} must be >= 0 (0 = no limit)")
    if max_rows == 0 or total <= max_rows:
        return np.arange(total)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=max_rows, replace=False))


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _per_text(rows, n_texts: int) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(n_texts)]
    for ti, k in rows:
        out[ti].append(k)
    return out


@dataclass(frozen=True)
class WordPlan:
    """The word rows every model yields for one corpus.

    Attributes:
        punctuation: the word rule (see :func:`split_words`).
        spans: per text all its word spans.
        rows: planned rows as ``(text index, word index)``, in corpus order.
        total: words in the corpus before sampling.
        max_rows: the row budget (0 = none); seed: the sampling seed.
    """

    punctuation: str
    spans: tuple
    rows: tuple
    total: int
    max_rows: int
    seed: int

    unit = "word"

    @property
    def n_texts(self) -> int:
        return len(self.spans)

    @property
    def sampled(self) -> bool:
        return len(self.rows) < self.total

    def digest(self) -> str:
        """sha256 of the rule and the planned rows (part of the representation store key)."""
        return _digest({"unit": "word", "rule": WORD_RULE_VERSION, "punctuation": self.punctuation,
                        "spans": self.spans, "rows": self.rows})

    def per_text(self) -> list[list[int]]:
        """Per text the planned word indices, in row order."""
        return _per_text(self.rows, self.n_texts)

    def labels(self, texts: list[str], text_ids: list[str] | None = None) -> list[str]:
        """A readable id per row: ``<text id>#<word index> <word>``."""
        ids = text_ids if text_ids is not None else [str(i) for i in range(len(texts))]
        out = []
        for ti, wi in self.rows:
            s, e = self.spans[ti][wi]
            out.append(f"{ids[ti]}#{wi} {texts[ti][s:e]}")
        return out

    def row_table(self, texts: list[str], text_ids: list[str] | None = None):
        """A pandas frame, one line per planned row: row, text_index, text_id, word_index, start,
        end, word."""
        import pandas as pd

        ids = text_ids if text_ids is not None else [str(i) for i in range(len(texts))]
        recs = []
        for r, (ti, wi) in enumerate(self.rows):
            s, e = self.spans[ti][wi]
            recs.append({"row": r, "text_index": ti, "text_id": ids[ti], "word_index": wi, "start": s, "end": e,
                         "word": texts[ti][s:e]})
        return pd.DataFrame(recs, columns=["row", "text_index", "text_id", "word_index", "start", "end", "word"])

    def describe(self) -> dict:
        """What goes into the manifest: rule, counts, budget, digest."""
        return {"unit": "word", "punctuation": self.punctuation, "words": self.total, "planned": len(self.rows),
                "max_rows": self.max_rows, "seed": self.seed, "sampled": self.sampled, "digest": self.digest()}


def plan_words(texts: list[str], *, punctuation: str = "attach", max_rows: int = DEFAULT_MAX_ROWS,
               seed: int = 0) -> WordPlan:
    """Split every text into words and choose the rows: all words, or ``max_rows`` of them drawn
    with ``seed`` (then kept in corpus order). Deterministic; no model involved.

    Raises:
        ValueError: no text, a bad ``punctuation``, ``max_rows`` < 0, or a corpus without words.
    """
    if len(texts) == 0:
        raise ValueError("texts is empty: nothing to split into words")
    spans = tuple(tuple(split_words(t, punctuation)) for t in texts)
    flat = [(ti, wi) for ti, sp in enumerate(spans) for wi in range(len(sp))]
    if not flat:
        raise ValueError("the texts hold no word (only whitespace)")
    keep = sample_rows(len(flat), max_rows, seed)
    rows = tuple(flat[i] for i in keep)
    return WordPlan(punctuation=punctuation, spans=spans, rows=rows, total=len(flat), max_rows=max_rows, seed=seed)


# ------------------------------------------------------------------------------------------- encoding
@dataclass
class UnitEncoding:
    """One model's tokenization of the corpus for a word or token plan.

    Attributes:
        ids, special: per text the token ids and special-tokens mask (truncated to max_length).
        groups: per text the token-position groups of its covered planned rows, in row order.
        covered: per planned row whether this model has it (a group to pool).
        truncated: texts cut at max_length; cut: their indices.
    """

    ids: list
    special: list
    groups: list
    covered: list
    truncated: int = 0
    notes: list = field(default_factory=list)
    cut: tuple = ()

    @property
    def uncovered(self) -> list[int]:
        """Planned row indices this model leaves without tokens."""
        return [r for r, c in enumerate(self.covered) if not c]


def require_fast(tokenizer, name: str, unit: str) -> None:
    """Raise ValueError naming the model unless ``tokenizer`` is a fast tokenizer with offsets."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"model {name!r} has a slow tokenizer ({type(tokenizer).__name__}) without character offsets; "
            f"{typed('unit', unit)} needs a fast, tokenizers-backed tokenizer (a tokenizer.json in the model folder)"
        )


def _encode(tokenizer, texts: list[str], **kw) -> dict:
    # verbose=False: a text over the model's limit is cut and counted here, so transformers' warning that
    # running it "will result in indexing errors" (it never runs untruncated) is not given
    return tokenizer(list(texts), add_special_tokens=True, return_offsets_mapping=True,
                     return_special_tokens_mask=True, verbose=False, **kw)


def encode_words(tokenizer, texts: list[str], plan: WordPlan, max_length: int, name: str = "model") -> UnitEncoding:
    """Tokenize ``texts`` with offsets and find every planned word's tokens.

    A planned word is covered when its group is non-empty and equals the group of the untruncated
    text (truncation cut none of its tokens).

    Args:
        tokenizer: a fast tokenizer; texts: the corpus texts the plan was made from;
        plan: a :class:`WordPlan`; max_length: tokens per text, special tokens included;
        name: the model's name for error messages.

    Raises:
        ValueError: a slow tokenizer (names the model), or texts that do not match the plan.
    """
    require_fast(tokenizer, name, "word")
    if len(texts) != plan.n_texts:
        raise ValueError(f"texts has {len(texts)} entries but the word plan was made for {plan.n_texts}")
    full = _encode(tokenizer, texts, truncation=False)
    long = [i for i, x in enumerate(full["input_ids"]) if len(x) > max_length]
    cut = _encode(tokenizer, [texts[i] for i in long], truncation=True, max_length=max_length) if long else None
    where = {i: j for j, i in enumerate(long)}
    ids, special, groups = [], [], []
    covered: list[bool] = []
    for ti, wanted in enumerate(plan.per_text()):
        src = cut if ti in where else full
        j = where.get(ti, ti)
        tid, sm, off = src["input_ids"][j], src["special_tokens_mask"][j], src["offset_mapping"][j]
        ids.append(list(tid))
        special.append(list(sm))
        text_groups = []
        if wanted:
            words = plan.spans[ti]
            g = word_groups(word_map(off, words, sm), len(words))
            if ti in where:
                g_full = word_groups(word_map(full["offset_mapping"][ti], words, full["special_tokens_mask"][ti]),
                                     len(words))
            else:
                g_full = g
            for wi in wanted:
                ok = bool(g[wi]) and len(g[wi]) == len(g_full[wi])
                covered.append(ok)
                if ok:
                    text_groups.append(g[wi])
        groups.append(text_groups)
    return UnitEncoding(ids=ids, special=special, groups=groups, covered=covered, truncated=len(long),
                        cut=tuple(long))


# ---------------------------------------------------------------------------------------------- tokens
@dataclass(frozen=True)
class TokenPlan:
    """The token rows of a corpus under one tokenization.

    Attributes:
        include_special: whether special positions (BOS/CLS/SEP) are rows.
        tokens: per text the token strings that are eligible rows (the identity models must share).
        rows: planned rows as ``(text index, k)``, k counting eligible tokens of that text.
        total: eligible tokens in the corpus before sampling; max_rows, seed: the budget.
        reference: the model whose tokenizer made the plan.
    """

    include_special: bool
    tokens: tuple
    rows: tuple
    total: int
    max_rows: int
    seed: int
    reference: str = ""

    unit = "token"

    @property
    def n_texts(self) -> int:
        return len(self.tokens)

    @property
    def sampled(self) -> bool:
        return len(self.rows) < self.total

    def signature(self) -> str:
        """sha256 of the token sequences (what two models must share for token rows)."""
        return _digest({"include_special": self.include_special, "tokens": self.tokens})

    def digest(self) -> str:
        """sha256 of the token sequences and planned rows (part of the representation store key)."""
        return _digest({"unit": "token", "signature": self.signature(), "rows": self.rows})

    def per_text(self) -> list[list[int]]:
        return _per_text(self.rows, self.n_texts)

    def labels(self, texts: list[str], text_ids: list[str] | None = None) -> list[str]:
        """A readable id per row: ``<text id>#<token index> <token>``."""
        ids = text_ids if text_ids is not None else [str(i) for i in range(len(texts))]
        return [f"{ids[ti]}#{k} {self.tokens[ti][k]}" for ti, k in self.rows]

    def row_table(self, texts: list[str], text_ids: list[str] | None = None):
        """A pandas frame, one line per planned row: row, text_index, text_id, token_index, token."""
        import pandas as pd

        ids = text_ids if text_ids is not None else [str(i) for i in range(len(texts))]
        recs = [{"row": r, "text_index": ti, "text_id": ids[ti], "token_index": k, "token": self.tokens[ti][k]}
                for r, (ti, k) in enumerate(self.rows)]
        return pd.DataFrame(recs, columns=["row", "text_index", "text_id", "token_index", "token"])

    def describe(self) -> dict:
        return {"unit": "token", "include_special": self.include_special, "tokens": self.total,
                "planned": len(self.rows), "max_rows": self.max_rows, "seed": self.seed, "sampled": self.sampled,
                "reference": self.reference, "signature": self.signature(), "digest": self.digest()}


def _token_positions(special: list[int], include_special: bool) -> list[int]:
    return [p for p, s in enumerate(special) if include_special or not s]


def encode_tokens(tokenizer, texts: list[str], max_length: int, include_special: bool = False,
                  name: str = "model") -> tuple[UnitEncoding, tuple]:
    """Tokenize ``texts`` for token rows. Returns (encoding with one single-token group per eligible
    token, per text the eligible token strings). Raises ValueError for a slow tokenizer."""
    require_fast(tokenizer, name, "token")
    full = tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    enc = tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=max_length,
                    return_special_tokens_mask=True)
    ids, special, groups, strings = [], [], [], []
    for tid, sm in zip(enc["input_ids"], enc["special_tokens_mask"]):
        pos = _token_positions(sm, include_special)
        ids.append(list(tid))
        special.append(list(sm))
        groups.append([[p] for p in pos])
        toks = tokenizer.convert_ids_to_tokens(list(tid))
        strings.append(tuple(str(toks[p]) for p in pos))
    cut = tuple(i for i, f in enumerate(full) if len(f) > max_length)
    enc_ = UnitEncoding(ids=ids, special=special, groups=groups, covered=[], truncated=len(cut), cut=cut)
    return enc_, tuple(strings)


def plan_tokens(tokens: tuple, *, include_special: bool = False, max_rows: int = DEFAULT_MAX_ROWS, seed: int = 0,
                reference: str = "") -> TokenPlan:
    """A token plan from per-text token strings (see :func:`encode_tokens`): all eligible tokens,
    or ``max_rows`` of them drawn with ``seed``, in corpus order.

    Raises:
        ValueError: ``max_rows`` < 0, or a corpus without any eligible token.
    """
    flat = [(ti, k) for ti, toks in enumerate(tokens) for k in range(len(toks))]
    if not flat:
        raise ValueError("the corpus has no token rows (every token is a special token)")
    keep = sample_rows(len(flat), max_rows, seed)
    return TokenPlan(include_special=bool(include_special), tokens=tuple(tuple(t) for t in tokens),
                     rows=tuple(flat[i] for i in keep), total=len(flat), max_rows=max_rows, seed=seed,
                     reference=reference)


def check_same_tokens(plan: TokenPlan, tokens: tuple, name: str) -> None:
    """Raise ValueError unless ``tokens`` (per text, from :func:`encode_tokens`) equal the plan's.

    The message names both models and the first text where they differ, and suggests ``unit='word'``.
    """
    if len(tokens) != plan.n_texts:
        raise ValueError(f"model {name!r} tokenized {len(tokens)} texts but the token plan has {plan.n_texts}")
    for ti, (a, b) in enumerate(zip(plan.tokens, tokens)):
        if tuple(a) != tuple(b):
            k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            show_a = " ".join(a[max(0, k - 2): k + 3])
            show_b = " ".join(b[max(0, k - 2): k + 3])
            raise ValueError(
                f"{typed('unit', 'token')} needs models whose tokenizers give identical token sequences, but "
                f"{name!r} and {plan.reference or 'the first model'!r} split text {ti} differently "
                f"(token {k}: {show_b!r} vs {show_a!r}); use {typed('unit', 'word')}, which aligns rows across "
                "tokenizers through character offsets"
            )


def token_groups(plan: TokenPlan, encoding: UnitEncoding) -> list[list[list[int]]]:
    """Per text the single-token groups of the planned rows (positions in this model's ids)."""
    out = []
    for ti, ks in enumerate(plan.per_text()):
        out.append([encoding.groups[ti][k] for k in ks])
    return out
