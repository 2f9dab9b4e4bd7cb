"""Text side of the front end: the Qwen2 BPE tokenizer with CosyVoice's specials, prompt assembly, segment splitting
and the reference's normalisation (wetext plus its own rules)."""

from __future__ import annotations

import functools
import itertools
import json
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as _HFTokenizer

from voiceclone.errors import ModelError

# Qwen2's pre-tokenizer pattern (what transformers' Qwen2 converter installs).
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

ENDOFPROMPT = "<|endofprompt|>"
SYSTEM_PROMPT = "You are a helpful assistant."

# CosyVoice2 `additional_special_tokens`, in registration order (ids follow this order after the base specials).
COSYVOICE2_SPECIALS = [
    "<|im_start|>", "<|im_end|>", ENDOFPROMPT, "[breath]", "<strong>", "</strong>", "[noise]", "[laughter]",
    "[cough]", "[clucking]", "[accent]", "[quick_breath]", "<laughter>", "</laughter>", "[hissing]", "[sigh]",
    "[vocalized-noise]", "[lipsmack]", "[mn]",
]  # fmt: skip

# CMU ARPAbet phones in alphabetical order; vowels also carry stress variants 0/1/2.
_CMU_VOWELS = {"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"}
_CMU_PHONES = (
    "AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH UW V W Y Z ZH".split()  # noqa: SIM905
)
# Pinyin initials and toned finals of CosyVoice3, in code-point order.
_PINYIN_UNITS = """
a ai an ang ao b c ch d e ei en eng f g h i ian in ing iu ià iàn iàng iào iá ián iáng iáo iè ié iòng ióng iù iú
iā iān iāng iāo iē iě iōng iū iǎ iǎn iǎng iǎo iǒng iǔ j k l m n o ong ou p q r s sh t u uang ue un uo uà uài uàn
uàng uá uái uán uáng uè ué uì uí uò uó uā uāi uān uāng uē uě uī uō uǎ uǎi uǎn uǎng uǐ uǒ vè w x y z zh à ài àn
àng ào á ái án áng áo è èi èn èng èr é éi én éng ér ì ìn ìng í ín íng ò òng òu ó óng óu ù ùn ú ún ā āi ān āng āo
ē ēi ēn ēng ě ěi ěn ěng ěr ī īn īng ō ōng ōu ū ūn ǎ ǎi ǎn ǎng ǎo ǐ ǐn ǐng ǒ ǒng ǒu ǔ ǔn ǘ ǚ ǜ
""".split()  # noqa: SIM905


def _pronunciation_tokens() -> list[str]:
    """The 260 v3 pronunciation tokens: CMU phones (with stress variants) then pinyin units."""
    cmu = []
    for phone in _CMU_PHONES:
        cmu.append(f"[{phone}]")
        if phone in _CMU_VOWELS:
            cmu.extend(f"[{phone}{stress}]" for stress in "012")
    return cmu + [f"[{unit}]" for unit in _PINYIN_UNITS]


COSYVOICE3_SPECIALS = COSYVOICE2_SPECIALS + ["<|endofsystem|>"] + _pronunciation_tokens()
FAMILY_SPECIALS = {"cosyvoice2": COSYVOICE2_SPECIALS, "cosyvoice3": COSYVOICE3_SPECIALS}


class Tokenizer:
    """Byte-level BPE tokenizer equal to CosyVoice's `get_qwen_tokenizer`: no BOS/EOS, specials skipped on decode."""

    def __init__(self, backend: _HFTokenizer):
        self._backend = backend
        self.endofprompt_id = backend.token_to_id(ENDOFPROMPT)

    @classmethod
    def from_dir(cls, blank_en_dir: str | Path, family: str = "cosyvoice3") -> Tokenizer:
        """Build from `vocab.json` + `merges.txt` + `tokenizer_config.json` of a `CosyVoice-BlankEN` folder."""
        folder = Path(blank_en_dir)
        if family not in FAMILY_SPECIALS:
            raise ModelError(f"unknown tokenizer family {family!r} (expected one of {sorted(FAMILY_SPECIALS)})")
        paths = {name: folder / name for name in ("vocab.json", "merges.txt", "tokenizer_config.json")}
        for path in paths.values():
            if not path.is_file():
                raise ModelError(f"{path}: tokenizer file missing")
        try:
            bpe = models.BPE.from_file(str(paths["vocab.json"]), str(paths["merges.txt"]))
            config = json.loads(paths["tokenizer_config.json"].read_text(encoding="utf-8"))
        except Exception as exc:  # any parse failure is a broken model directory
            raise ModelError(f"{folder}: cannot read tokenizer files: {exc}") from exc
        backend = _HFTokenizer(bpe)
        backend.normalizer = normalizers.NFC()
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        backend.decoder = decoders.ByteLevel()
        declared = {
            entry["content"]: int(token_id) for token_id, entry in config.get("added_tokens_decoder", {}).items()
        }
        for content in sorted(declared, key=declared.get) + FAMILY_SPECIALS[family]:
            if backend.token_to_id(content) is None:
                backend.add_special_tokens([AddedToken(content, special=True, normalized=False)])
        for content, token_id in declared.items():
            actual = backend.token_to_id(content)
            if actual != token_id:
                raise ModelError(f"{paths['tokenizer_config.json']}: {content} lands on id {actual}, not {token_id}")
        return cls(backend)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens are recognised anywhere in the raw text."""
        return self._backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """Text of `ids` with special tokens left out."""
        return self._backend.decode(list(ids), skip_special_tokens=True)

    def __len__(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)


def assemble_prompt_text(prompt_text: str) -> str:
    """CosyVoice3 prompt text: the system prompt and `<|endofprompt|>` before the transcript unless already there."""
    if ENDOFPROMPT in prompt_text:
        return prompt_text
    return f"{SYSTEM_PROMPT}{ENDOFPROMPT}{prompt_text}"


# ---------------------------------------------------------------------------------------------------------------------
# Segment splitting (the reference's split_paragraph rules)

ZH_MARKS = frozenset("。？！；：、.?!;")
EN_MARKS = frozenset(".?!;:")
CLAUSE_MARKS = frozenset(",，、;；:：")  # where a sentence too long for one segment is cut first
CLOSING_QUOTES = frozenset('"”')
TOKEN_MAX_N, TOKEN_MIN_N, MERGE_LEN = 80, 60, 20
_WORDS = re.compile(r"\s+|\S+\s*")


def contains_chinese(text: str) -> bool:
    """True when `text` has a CJK unified ideograph (U+4E00..U+9FFF): the reference's zh/en switch."""
    return any("\u4e00" <= char <= "\u9fff" for char in text)


def has_special_markup(text: str) -> bool:
    """Texts carrying `<|...|>` markup bypass normalisation and splitting, as in the reference."""
    return "<|" in text and "|>" in text


def is_punctuation_only(text: str) -> bool:
    """True when `text` has only punctuation, symbols or spaces (such segments are dropped)."""
    return all(unicodedata.category(char)[0] in "PSZ" or char.isspace() for char in text)


def split_sentences(text: str, marks: frozenset[str], final_mark: str) -> list[str]:
    """Cut after every sentence mark, keeping a closing quote (and runs of marks) with their sentence."""
    if text and text[-1] not in marks:
        text += final_mark
    sentences: list[str] = []
    start = 0
    for i, char in enumerate(text):
        if char not in marks:
            continue
        end = i + 2 if i + 1 < len(text) and text[i + 1] in CLOSING_QUOTES else i + 1
        if end <= start:
            continue
        piece = text[start:end]
        if sentences and all(c in marks or c in CLOSING_QUOTES for c in piece):
            sentences[-1] += piece  # a repeated mark ("?!", "...") stays with its sentence
        else:
            sentences.append(piece)
        start = end
    return sentences


def merge_sentences(
    sentences: list[str], length: Callable[[str], int], fits: Callable[[str], bool] = lambda text: True
) -> list[str]:
    """Greedy merge: grow a segment while it is short (<= 60) or the merge stays <= 80; a short tail (< 20) joins
    the previous segment. A merge that would not `fit` (see `max_segment_tokens`) starts a new segment instead."""
    segments: list[str] = []
    current = ""
    for sentence in sentences:
        if current and (
            (length(current + sentence) > TOKEN_MAX_N and length(current) > TOKEN_MIN_N) or not fits(current + sentence)
        ):
            segments.append(current)
            current = ""
        current += sentence
    if current:
        if segments and length(current) < MERGE_LEN and fits(segments[-1] + current):
            segments[-1] += current
        else:
            segments.append(current)
    return segments


def max_segment_tokens(mel_frames: int, token_mel_ratio: int, prompt_tokens: int, max_token_text_ratio: float) -> int:
    """The most text tokens one segment may have: its longest generation (`max_token_text_ratio` speech tokens per text
    token, the LLM's length rule) after the longest prompt (`prompt_tokens`) stays within `mel_frames` (the flow's
    fixed noise table, which no segment may outgrow)."""
    room = mel_frames // token_mel_ratio - prompt_tokens
    n = max(0, int(room / max_token_text_ratio))
    while n > 0 and int(n * max_token_text_ratio) > room:
        n -= 1
    return n


def _cut_after(text: str, marks: frozenset[str]) -> list[str]:
    """`text` cut after every run of `marks`; the pieces join back to `text`."""
    pieces, start = [], 0
    for i, char in enumerate(text):
        if char in marks and (i + 1 == len(text) or text[i + 1] not in marks):
            pieces.append(text[start : i + 1])
            start = i + 1
    return pieces + ([text[start:]] if start < len(text) else [])


def _fit(sentence: str, length: Callable[[str], int], fits: Callable[[str], bool], chinese: bool) -> list[str]:
    """A sentence as pieces that fit one segment: whole when it fits, else cut by clause, then a clause still too long
    by length at word boundaries (characters in Chinese), packed up to 80 as the splitter measures. A single word that
    does not fit stays whole (the engine refuses it)."""
    if fits(sentence):
        return [sentence]
    pieces: list[str] = []
    for clause in _cut_after(sentence, CLAUSE_MARKS):
        if fits(clause):
            pieces.append(clause)
            continue
        current = ""
        for word in list(clause) if chinese else _WORDS.findall(clause):
            if current and (length(current + word) > TOKEN_MAX_N or not fits(current + word)):
                pieces.append(current)
                current = ""
            current += word
        pieces += [current] if current else []
    return pieces


def split_segments(text: str, tokenizer: Tokenizer, max_tokens: int | None = None) -> list[str]:
    """Split a long text into synthesis segments: characters measure Chinese text, tokens measure other text.

    Differences from the reference: repeated marks stay with their sentence instead of being dropped, and
    whitespace-only segments count as punctuation-only. With `max_tokens` (see `max_segment_tokens`) no segment
    grows past it: a longer sentence is cut by clause, then by length at word boundaries (`_fit`); where every
    segment fits, the segments are the reference's. Texts with `<|...|>` markup come back whole.
    """
    if not text.strip() or has_special_markup(text):
        return [text]

    @functools.lru_cache(maxsize=64)  # `length` and `fits` measure the same strings: encode each once
    def tokens(piece: str) -> int:
        return len(tokenizer.encode(piece))

    chinese = contains_chinese(text)
    length = len if chinese else tokens
    sentences = split_sentences(text, ZH_MARKS, "。") if chinese else split_sentences(text, EN_MARKS, ".")
    if max_tokens is None:
        segments = merge_sentences(sentences, length)
    else:

        def fits(piece: str) -> bool:
            return tokens(piece) <= max_tokens

        pieces = [piece for sentence in sentences for piece in _fit(sentence, length, fits, chinese)]
        segments = merge_sentences(pieces, length, fits)
    return [segment for segment in segments if not is_punctuation_only(segment)]


# ---------------------------------------------------------------------------------------------------------------------
# Normalisation: the reference's rules around WeTextProcessing's runtime (wetext)

_DIGIT = re.compile(r"\d")
_BLANK_RUN = re.compile(r"\s{2,}")
_ESCAPED = re.compile(r'\\(["\\])')


@functools.cache
def _normalizers() -> dict[str, Any]:
    """wetext's TN normalisers, built once per process on first use (importing wetext reads every FST it ships)."""
    from wetext import Normalizer

    return {"zh": Normalizer(lang="zh", operator="tn", remove_erhua=False), "en": Normalizer(lang="en", operator="tn")}


def wetext_normalize(text: str, lang: str) -> str:
    """Numbers, dates, times, money and units read out by wetext's `lang` ("zh" or "en") grammar.

    As the reference's wetext does, only a text with a digit is normalised. Unlike it, runs of blanks are made one
    space for the English grammar (it has no path through two), a text the grammar cannot read comes back as it is
    (the reference raises), and wetext 0.1.8's doubled escaping of `"` and `\\` is undone.
    """
    if not _DIGIT.search(text):
        return text
    if lang == "en":
        text = _BLANK_RUN.sub(" ", text)
    try:
        spoken = _normalizers()[lang].normalize(text)
    except (AssertionError, IndexError):  # wetext's token parser fails on the empty tagging of an unreadable text
        return text
    return _ESCAPED.sub(r"\1", spoken)


def spell_out_digits(text: str) -> str:
    """Every run of digits (`str.isdigit`, as the reference) as English words by inflect's `number_to_words`; a run
    over inflect's range (37 digits and more; the reference raises) stays as written."""
    if not any(char.isdigit() for char in text):
        return text
    import inflect  # seconds to import (typeguard instruments it): only when a digit survives wetext

    engine = inflect.engine()

    def words(digits: str) -> str:
        try:
            return engine.number_to_words(digits)
        except inflect.NumOutOfRangeError:
            return digits

    runs = (("".join(run), is_digit) for is_digit, run in itertools.groupby(text, key=str.isdigit))
    return "".join(words(run) if is_digit else run for run, is_digit in runs)


def _drop_spaces_between_non_ascii(text: str) -> str:
    """Keep a space only when both neighbours are non-space ASCII characters (the reference's `replace_blank`)."""
    out = []
    for i, char in enumerate(text):
        if char == " ":
            before = text[i - 1] if i > 0 else " "
            after = text[i + 1] if i + 1 < len(text) else " "
            if not (before.isascii() and before != " " and after.isascii() and after != " "):
                continue
        out.append(char)
    return "".join(out)


def _normalize_zh(text: str) -> str:
    text = wetext_normalize(text, "zh").replace("\n", "")
    text = _drop_spaces_between_non_ascii(text)
    text = text.replace("²", "平方").replace("³", "立方")
    text = text.replace(".", "。").replace(" - ", "，")
    for mark in ("（", "）", "【", "】", "`"):
        text = text.replace(mark, "")
    text = text.replace("——", " ")
    return re.sub(r"[，,、]+$", "。", text)


def normalize(text: str) -> str:
    """The reference's text front end before splitting (`--text-frontend`): strip, then for a text with Chinese
    wetext zh and its punctuation rules, else wetext en and digit runs spelled out. `<|...|>` markup passes."""
    if not text or has_special_markup(text):
        return text
    text = text.strip()
    if contains_chinese(text):
        return _normalize_zh(text)
    return spell_out_digits(wetext_normalize(text, "en"))


def frontend_id(enabled: bool) -> str:
    """What reads the target texts, for the resume fingerprint: the normaliser packages and their versions (a new
    wetext or inflect may read a text differently), or "verbatim" with `--no-text-frontend`."""
    if not enabled:
        return "verbatim"
    from importlib.metadata import version

    return f"wetext-{version('wetext')}+inflect-{version('inflect')}"
