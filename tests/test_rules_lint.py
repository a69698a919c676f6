"""``capacitor lint rules`` over the table of good and bad rule files in tests/rules.

Each bad file states on its first line the one finding it must produce:
``# expect: SEVERITY at LINE:COL: MESSAGE``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from capacitor.cli.main import main

REPO = Path(__file__).resolve().parent.parent
TABLE = Path("tests/rules")
EXPECT = re.compile(r"# expect: (?P<severity>error|warning) at (?P<line>\d+):(?P<column>\d+): (?P<message>.*)")

BAD = sorted((REPO / TABLE / "bad").glob("*.rules"))
GOOD = sorted((REPO / TABLE / "good").glob("*.rules"))
SHIPPED = sorted((REPO / "rules").glob("*.rules"))


@pytest.fixture(autouse=True)
def in_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("CAPACITOR_DATA", raising=False)


def lint(*args: str) -> tuple[int, str, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["lint", "rules", *args])
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_file_gives_its_finding(path: Path):
    expected = EXPECT.match(path.read_text(encoding="utf-8").splitlines()[0])
    assert expected is not None, f"{path.name} lacks its '# expect:' line"
    relative = path.relative_to(REPO)

    code, out, err = lint(str(relative), "--data", str(TABLE), "--format", "json")

    findings = json.loads(out)
    assert len(findings) == 1, findings
    finding = findings[0]
    assert finding["file"] == str(relative)
    assert finding["severity"] == expected["severity"]
    assert (finding["line"], finding["column"]) == (int(expected["line"]), int(expected["column"]))
    assert finding["message"] == expected["message"]
    assert code == (1 if expected["severity"] == "error" else 0)


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_good_file_is_clean(path: Path):
    code, out, err = lint(str(path.relative_to(REPO)), "--data", str(TABLE))
    assert err == ""
    assert code == 0
    assert out.strip() == "1 rule file(s) checked: 0 error(s), 0 warning(s)"


def test_shipped_examples_lint_clean_against_shipped_config():
    code, out, err = lint("--data", ".")
    assert err == ""
    assert code == 0
    assert out.strip() == f"{len(SHIPPED)} rule file(s) checked: 0 error(s), 0 warning(s)"


def test_text_format_is_file_line_column():
    path = TABLE / "bad" / "unknown-keyword.rules"
    code, out, err = lint(str(path), "--data", str(TABLE))
    assert code == 1
    assert err.splitlines()[0] == (
        f"{path}:3:10: error: unknown keyword 'ContrastBolusAgnet'; did you mean 'ContrastBolusAgent'?"
    )


def test_folder_reports_every_file():
    code, out, err = lint(str(TABLE / "bad"), "--data", str(TABLE), "--format", "json")
    files = {finding["file"] for finding in json.loads(out)}
    assert code == 1
    assert str(TABLE / "bad" / "unknown-node.rules") in files
    assert str(TABLE / "bad" / "unknown-keyword.rules") in files


def test_missing_path_is_an_error():
    code, out, err = lint("no/such.rules", "--data", str(TABLE))
    assert code == 1
    assert "no/such.rules: error: no such file or folder" in err
