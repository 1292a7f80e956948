import pytest

from awares_rl.protocol import ToolCallError, crops_user_message, format_tool_call, parse_tool_call


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


def test_roundtrip():
    for ids in ([0], [4, 2], [8, 7, 6]):
        assert parse_tool_call(format_tool_call(ids)) == ids


def test_crops_user_message_has_one_image_per_crop():
    msg = crops_user_message([0, 4])
    assert [p["type"] for p in msg["content"]] == ["image", "image", "text"]
    assert "0 top-left, 4 center" in msg["content"][-1]["text"]
