import pytest

from vlcli.config import jsonc
from vlcli.errors import ProfileError


def test_comments_and_trailing_commas():
    text = """
    // a comment
    {
      "a": 1, // trailing comment
      /* block
         comment */ "b": [1, 2, 3,],
      "url": "http://example.org/x // not a comment",
      "c": {"d": true,},
    }
    """
    assert jsonc.loads(text) == {"a": 1, "b": [1, 2, 3], "url": "http://example.org/x // not a comment", "c": {"d": True}}


def test_escaped_quote_inside_string():
    assert jsonc.loads('{"p": "say \\"hi\\" // still text",}') == {"p": 'say "hi" // still text'}


def test_syntax_error_names_file_line_column():
    text = '{\n  "a": 1,\n  "b": 2,,\n  "c": 3\n}\n'
    with pytest.raises(ProfileError) as exc:
        jsonc.loads(text, "my.jsonc")
    msg = str(exc.value)
    assert msg.startswith("my.jsonc:3:10: Expecting property name")


def test_missing_comma_position():
    text = '{\n  "a": "x"\n\n  "b": 1\n}'
    with pytest.raises(ProfileError, match=r"^p:4:3: Expecting ',' delimiter"):
        jsonc.loads(text, "p")


def test_unterminated_block_comment():
    with pytest.raises(ProfileError, match=r"^p:2:3: unterminated /\* comment"):
        jsonc.loads('{\n  /* open\n}', "p")


def test_reference_file_first_slip_is_double_comma(reference_jsonc):
    with pytest.raises(ProfileError) as exc:
        jsonc.load(reference_jsonc)
    assert f"{reference_jsonc}:38:29:" in str(exc.value)
    assert "vis_weight_decay" in str(exc.value)


def test_missing_file():
    with pytest.raises(ProfileError, match="does not exist"):
        jsonc.load("/nonexistent/profile.jsonc")
