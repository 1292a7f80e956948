import pytest

from awares_rl.core.protocol import (
    ToolCallError,
    crops_user_message,
    format_tool_call,
    parse_answer,
    parse_tool_call,
)


def test_format_matches_paper():
    assert format_tool_call([3]) == "GET_CROPS: ['3']"
    assert format_tool_call([0, 5]) == "GET_CROPS: ['0','5']"


@pytest.mark.parametrize("bad", [[], [9], [1, 1], [-1]])
def test_format_rejects(bad):
    with pytest.raises(ValueError):
        format_tool_call(bad)


@pytest.mark.parametrize("text,expected", [
    ("The answer is 42", None),
    ("", None),
    ("GET_CROPS: ['3']", [3]),
    ("  GET_CROPS: ['0','5']\n", [0, 5]),
    ('GET_CROPS: ["8", "2"]', [8, 2]),
    ("GET_CROPS:[1, 4]", [1, 4]),
    ("GET_CROPS: ['04']", [4]),
    ("GET_CROPS: ['0', '1', '2', '3', '4', '5', '6', '7', '8']", list(range(9))),
])
def test_parse_valid(text, expected):
    assert parse_tool_call(text) == expected


@pytest.mark.parametrize("text,reason", [
    ("GET_CROPS: []", "empty"),
    ("GET_CROPS: ['9']", "out-of-range"),
    ("GET_CROPS: ['12']", "out-of-range"),
    ("GET_CROPS: ['-1']", "bad-item"),
    ("GET_CROPS: ['all']", "bad-item"),
    ("GET_CROPS: ['x', '1']", "bad-item"),
    ("GET_CROPS: ['1',]", "bad-item"),
    ("GET_CROPS: ['\u00b3']", "bad-item"),  # superscript three: str.isdigit() is True, int() raises
    ("GET_CROPS: [\u00b2]", "bad-item"),
    ("GET_CROPS: ['\u0663']", "bad-item"),  # Arabic-Indic three: int() would give 3
    ("GET_CROPS: ['\uff13']", "bad-item"),  # full-width three
    ("GET_CROPS: ['\u0967', '2']", "bad-item"),  # Devanagari one
    ("GET_CROPS: ['003']", "bad-item"),  # at most 2 digits per id
    ("GET_CROPS: ['" + "9" * 5000 + "']", "bad-item"),
    ("GET_CROPS: ['3 4']", "bad-item"),
    ("GET_CROPS: ['+3']", "bad-item"),
    ("GET_CROPS: ['3.0']", "bad-item"),
    ("GET_CROPS: ['0','1','2','3','4','5','6','7','8','0']", "too-many"),
    ("GET_CROPS: [" + "1," * 10000 + "1]", "too-many"),
    ("GET_CROPS: ['3', '3']", "duplicate"),
    ("I need GET_CROPS: ['3']", "junk"),
    ("GET_CROPS: ['3'] then answer", "junk"),
    ("GET_CROPS: ['3'", "partial"),
    ("GET_CROPS", "partial"),
])
def test_parse_invalid(text, reason):
    with pytest.raises(ToolCallError) as e:
        parse_tool_call(text)
    assert e.value.reason == reason and text in str(e.value)


def test_answer_turn_must_not_call_again():
    assert parse_answer("red") == "red"
    for text in ("GET_CROPS: ['4']", "GET_CROPS: ['\u00b3']", "red, or GET_CROPS: ['1']"):
        with pytest.raises(ToolCallError) as e:
            parse_answer(text)
        assert e.value.reason == "second-call" and text in str(e.value)


def test_roundtrip():
    for ids in ([0], [4, 2], [8, 7, 6]):
        assert parse_tool_call(format_tool_call(ids)) == ids


def test_crops_user_message_has_one_image_per_crop():
    msg = crops_user_message([0, 4])
    assert [p["type"] for p in msg["content"]] == ["image", "image", "text"]
    assert "0 top-left, 4 center" in msg["content"][-1]["text"]
