"""Syntax error messages of the rule parser: keyword suggestions, unterminated strings."""

from __future__ import annotations

import pytest

from capacitor.errors import Finding, RuleError
from capacitor.rules.parser import parse_rules


def syntax_error(text: str) -> Finding:
    with pytest.raises(RuleError) as raised:
        parse_rules(text, "test.rules")
    findings = raised.value.findings
    assert len(findings) == 1, findings
    return findings[0]


@pytest.mark.parametrize(
    ("text", "word", "keyword", "column"),
    [
        ('rout "x" {\n  forward to ARCHIVE\n}\n', "rout", "route", 1),
        ('mutat "x" {\n  delete private\n}\n', "mutat", "mutate", 1),
        ('srot "x" {\n  sort by SeriesNumber\n}\n', "srot", "sort", 1),
        (
            'route "x" {\n  forward to ARCHIVE\n}\nRoute "y" {\n  drop\n}\n',
            "Route",
            "route",
            1,
        ),
    ],
    ids=["rout", "mutat", "srot", "Route"],
)
def test_misspelt_rule_kind_suggests_keyword(
    text: str, word: str, keyword: str, column: int
):
    finding = syntax_error(text)

    assert finding.message == (
        f"syntax error: unexpected {word!r}; did you mean {keyword!r}?"
    )
    assert finding.column == column


@pytest.mark.parametrize(
    ("statement", "word", "keyword", "column"),
    [
        ("foward to ARCHIVE", "foward", "forward", 3),
        ('whn Modality == "CT"', "whn", "when", 3),
        ("forward ot ARCHIVE", "ot", "to", 11),
        ("drop orignal", "orignal", "original", 8),
        ("exlcude", "exlcude", "exclude", 3),
        ('when Modality == "CT" adn Modality != "MR"', "adn", "and", 25),
        ("when Modality mathces /CT/", "mathces", "matches", 17),
        ("when PatientName exist", "exist", "exists", 20),
        ("sort by SeriesNumber as intger", "intger", "integer", 27),
        ("sort by SeriesNumber decsending", "decsending", "descending", 24),
        ("sort by SeriesNumber thne by InstanceNumber", "thne", "then", 24),
    ],
    ids=[
        "foward",
        "whn",
        "ot",
        "orignal",
        "exlcude",
        "adn",
        "mathces",
        "exist",
        "intger",
        "decsending",
        "thne",
    ],
)
def test_misspelt_statement_keyword_suggests_keyword(
    statement: str, word: str, keyword: str, column: int
):
    kind = "sort" if statement.startswith("sort") else "route"
    finding = syntax_error(f'{kind} "x" {{\n  {statement}\n}}\n')

    assert finding.message == (
        f"syntax error: unexpected {word!r}; did you mean {keyword!r}?"
    )
    assert (finding.line, finding.column) == (2, column)


def test_misspelt_modifier_suggests_keyword():
    finding = syntax_error('route "x" fr ARCHIVE {\n  drop\n}\n')

    assert finding.message == "syntax error: unexpected 'fr'; did you mean 'for'?"
    assert (finding.line, finding.column) == (1, 11)


def test_unrelated_word_lists_expected_tokens():
    finding = syntax_error('route "x" {\n  banana\n}\n')

    assert finding.message.startswith("syntax error: unexpected 'banana'; expected ")
    assert "did you mean" not in finding.message
    assert "'forward'" in finding.message


def test_misplaced_keyword_lists_expected_tokens():
    finding = syntax_error('route "x" {\n  to ARCHIVE\n}\n')

    assert finding.message.startswith("syntax error: unexpected 'to'; expected ")
    assert "did you mean" not in finding.message


@pytest.mark.parametrize(
    ("text", "line", "column", "shown"),
    [
        ('route "x" {\n  when Modality == "CT\n  forward to ARCHIVE\n}\n', 2, 20, '"CT'),
        ('route "x" {\n  forward to "ARCHIVE\n}\n', 2, 14, '"ARCHIVE'),
        ('route "x {\n  forward to ARCHIVE\n}\n', 1, 7, '"x {'),
        ('mutate "x" {\n  set PatientName = "anon\r\n}\r\n', 2, 21, '"anon'),
        ('route "x" {\n  save to "{SOPInstanceUID}.dcm', 2, 11, '"{SOPInstanceUID}.dcm'),
    ],
    ids=["condition", "node", "rule-name", "crlf", "end-of-file"],
)
def test_unterminated_string_points_at_opening_quote(
    text: str, line: int, column: int, shown: str
):
    finding = syntax_error(text)

    assert finding.message == (
        f"syntax error: string '{shown}' starting at column {column} is not closed "
        "before the end of the line; add the closing '\"' on the same line"
    )
    assert (finding.line, finding.column) == (line, column)


def test_unterminated_string_long_text_is_shortened():
    text = 'route "x" {\n  when StudyDescription == "' + "A" * 60 + "\n}\n"
    finding = syntax_error(text)

    assert f"string '\"{'A' * 39}...' starting at column 28" in finding.message
    assert (finding.line, finding.column) == (2, 28)


def test_unterminated_string_escaped_quote_hint():
    finding = syntax_error('route "x" {\n  save to "C:\\\\out\\"\n}\n')

    assert finding.message.startswith(
        "syntax error: string '\"C:\\\\out\\\"' starting at column 11 is not closed"
    )
    assert finding.message.endswith(
        "; '\\\"' inside a string is an escaped quote, so write '\\\\' for a backslash"
    )
    assert (finding.line, finding.column) == (2, 11)
