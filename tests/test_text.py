"""Tokenizer parity with the reference, prompt assembly, segment splitting and normalisation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from voiceclone.errors import ModelError
from voiceclone.text import (
    COSYVOICE3_SPECIALS,
    EN_MARKS,
    ZH_MARKS,
    Tokenizer,
    assemble_prompt_text,
    normalize,
    number_to_words,
    split_segments,
    split_sentences,
)

PARITY = Path(__file__).resolve().parents[2] / "shared" / "parity"


@pytest.fixture(scope="module")
def v3_tokenizer(v3_model_dir) -> Tokenizer:
    return Tokenizer.from_dir(v3_model_dir / "CosyVoice-BlankEN")


@pytest.mark.parametrize("family", ["cosyvoice3", "cosyvoice2"])
def test_tokenizer_matches_reference_cases(family):
    tokenizer = Tokenizer.from_dir(PARITY / f"{family}-tiny" / "model" / "CosyVoice-BlankEN", family=family)
    fixture = json.loads((PARITY / f"{family}-tiny" / "cases" / "tokenizer.json").read_text(encoding="utf-8"))
    assert len(tokenizer) == fixture["tokenizer_len"]
    assert len(fixture["cases"]) >= 30
    for case in fixture["cases"]:
        assert tokenizer.encode(case["text"]) == case["ids"], case["text"]
        assert tokenizer.decode(case["ids"]) == case["decoded"], case["text"]
    assert tokenizer.endofprompt_id == 151646


def test_v3_special_token_ids(v3_tokenizer):
    assert len(COSYVOICE3_SPECIALS) == 280
    assert v3_tokenizer.encode("<|endofsystem|>") == [151663]
    assert v3_tokenizer.encode("[AA]") == [151664]
    assert v3_tokenizer.encode("[ǜ]") == [151923]
    assert len(v3_tokenizer) == 151924


def test_tokenizer_missing_files(tmp_path):
    with pytest.raises(ModelError, match="vocab.json"):
        Tokenizer.from_dir(tmp_path)


def test_frontend_prompt_text_ids(v3_tokenizer, v3_cases):
    for prompt in ("en", "zh"):
        case = json.loads((v3_cases / f"frontend_prompt_{prompt}.json").read_text(encoding="utf-8"))
        transcript = case["prompt_text"].split("<|endofprompt|>")[1]
        assert assemble_prompt_text(transcript) == case["prompt_text"]
        assert v3_tokenizer.encode(assemble_prompt_text(transcript)) == case["prompt_text_ids"]
        assert v3_tokenizer.encode(case["tts_text"]) == case["text_ids"]


def test_assemble_prompt_text_keeps_existing_marker():
    assert assemble_prompt_text("Speak slowly.<|endofprompt|>Hi there.") == "Speak slowly.<|endofprompt|>Hi there."
    assert assemble_prompt_text("Hi.") == "You are a helpful assistant.<|endofprompt|>Hi."


EN_TEXT = " ".join(
    f"Sentence number {word} talks about the {topic} and what it means for everyone involved!"
    for word, topic in zip(
        ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"],
        ["weather", "river", "market", "garden", "mountain", "library", "harbor", "festival", "forest", "bridge",
         "station", "museum"],
        strict=True,
    )
) + ' She said "Stop." Then: nothing?! Short one; end'  # fmt: skip

ZH_TEXT = (
    "今天天气很好，我们去公园散步。公园里有很多人在跑步、打太极拳，还有小朋友在放风筝！"
    "湖边的柳树已经发芽了，微风吹过，水面泛起一圈圈涟漪。我们沿着小路一直走到山顶；"
    "从山顶望下去，整座城市都笼罩在淡淡的雾气里，远处的高楼若隐若现。"
    "中午我们在山脚下的小饭馆吃了一碗热腾腾的面条，味道非常好。下午回家的路上，"
    "大家都说下次还要再来。“真是美好的一天。”妈妈笑着说"
)


def _strip(text: str) -> str:
    return re.sub(r"\s+", "", text)


def test_split_sentences_keeps_quotes_and_repeated_marks():
    assert split_sentences('She said "Stop." Then go', EN_MARKS, ".") == ['She said "Stop."', " Then go."]
    assert split_sentences("Really?! Yes... ok", EN_MARKS, ".") == ["Really?!", " Yes...", " ok."]
    assert split_sentences("好。“走吧。”他说", ZH_MARKS, "。") == ["好。", "“走吧。”", "他说。"]


def test_split_english_within_bounds_and_lossless(v3_tokenizer):
    segments = split_segments(EN_TEXT, v3_tokenizer)
    assert len(segments) >= 3
    lengths = [len(v3_tokenizer.encode(s)) for s in segments]
    assert all(n <= 80 + 20 for n in lengths), lengths  # a segment may exceed 80 only by the last merged sentence
    assert all(n >= 20 for n in lengths), lengths
    assert _strip("".join(segments)) == _strip(EN_TEXT) + "."


def test_split_chinese_within_bounds_and_lossless(v3_tokenizer):
    segments = split_segments(ZH_TEXT, v3_tokenizer)
    assert len(segments) >= 2
    assert all(20 <= len(s) <= 100 for s in segments), [len(s) for s in segments]
    assert "".join(segments) == ZH_TEXT + "。"
    assert any("“真是美好的一天。”" in s for s in segments)


def test_split_drops_punctuation_only_and_keeps_markup(v3_tokenizer):
    assert split_segments("...", v3_tokenizer) == []
    assert split_segments("Hello there. ...", v3_tokenizer) == ["Hello there. ..."]
    marked = "[laughter] Hello.<|endofprompt|> world"
    assert split_segments(marked, v3_tokenizer) == [marked]
    assert split_segments("Short.", v3_tokenizer) == ["Short."]


@pytest.mark.parametrize(
    "digits, words",
    [
        ("0", "zero"),
        ("7", "seven"),
        ("15", "fifteen"),
        ("40", "forty"),
        ("99", "ninety-nine"),
        ("100", "one hundred"),
        ("1234", "one thousand two hundred and thirty-four"),
        ("2000000", "two million"),
        ("1000001", "one million one"),
    ],
)
def test_number_to_words(digits, words):
    assert number_to_words(digits) == words


def test_normalize_english_and_chinese():
    assert normalize("  Call   me at 10\nplease ") == "Call me at ten please"
    assert normalize("面积是 5m² ，价格 3.5 元.") == "面积是5m平方，价格3.5元。"
    assert normalize("他说 ABC - DEF 好的（真的）【注】——结束，，") == "他说ABC，DEF好的真的注 结束。"
    assert normalize("Good <|endofprompt|> 123") == "Good <|endofprompt|> 123"
    assert normalize("") == ""
