"""Parse rule text into the plain rule IR: dicts and lists, with positions.

The grammar lives in ``grammar/rules.lark``. Every IR node that a later
check may complain about carries ``line`` and ``column``; each rule also
carries the ``file`` it came from.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
)
from lark.lexer import PatternStr

from capacitor.config.schema import closest
from capacitor.errors import Finding, RuleError
from capacitor.resources import resource_path

IR = dict[str, Any]

# Readable names for the grammar's terminals, used in syntax error messages.
_TERMINAL_NAMES = {
    "STRING": "a quoted string",
    "NAME": "a keyword",
    "NODE": "a node name",
    "TAG": "a tag such as (0010,0010)",
    "REGEX": "a /regex/",
    "NUMBER": "a number",
    "INT": "an index",
    "COMPARE": "a comparison (==, !=, <, <=, >, >=)",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "LPAR": "'('",
    "RPAR": "')'",
    "LSQB": "'['",
    "RSQB": "']'",
    "COMMA": "','",
    "DOT": "'.'",
    "EQUAL": "'='",
    "STAR": "'*'",
    "SORT_TYPE": "'integer' or 'string'",
    "DIRECTION": "'ascending' or 'descending'",
}

# The words of the grammar's terminals that are alternatives of keywords, such
# as SORT_TYPE: "integer" | "string". Lark compiles each to one regex, so the
# words are listed here for suggestions.
_KEYWORD_ALTERNATIVES = {
    "SORT_TYPE": ("integer", "string"),
    "DIRECTION": ("ascending", "descending"),
}

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Maximum length, in characters, of an unterminated string's excerpt in a message.
_MAX_STRING_EXCERPT = 40


@cache
def _parser() -> Lark:
    grammar = resource_path("grammar", "rules.lark").read_text(encoding="utf-8")
    return Lark(
        grammar,
        parser="lalr",
        strict=True,
        propagate_positions=True,
        start=["start", "ref"],
    )


def _position(item: Token | Tree[Any] | Any) -> dict[str, int]:
    if isinstance(item, Token):
        return {"line": item.line or 1, "column": item.column or 1}
    meta = getattr(item, "meta", None)
    if meta is not None and not meta.empty:
        return {"line": meta.line, "column": meta.column}
    return {"line": 1, "column": 1}


def _describe_expected(expected: set[str]) -> str:
    words = []
    for name in sorted(expected):
        if name in _TERMINAL_NAMES:
            words.append(_TERMINAL_NAMES[name])
        elif name == "$END":
            words.append("end of file")
        elif name.isupper() and not name.startswith("__"):
            words.append(f"'{name.lower()}'")
    unique = list(dict.fromkeys(words))
    if not unique:
        return "something else"
    if len(unique) > 8:
        unique = unique[:8] + ["..."]
    return ", ".join(unique)


def _expected_rule_keywords(expected: set[str]) -> list[str]:
    """Return the keywords among the terminal names `expected` by the parser."""
    words: list[str] = []
    for name in sorted(expected):
        if name in _KEYWORD_ALTERNATIVES:
            words.extend(_KEYWORD_ALTERNATIVES[name])
            continue
        if name == "$END":
            continue
        pattern = _parser().get_terminal(name).pattern
        if isinstance(pattern, PatternStr) and _WORD.fullmatch(pattern.value):
            words.append(pattern.value)
    return words


def _is_transposition(word: str, keyword: str) -> bool:
    """Return whether `word` is `keyword` with two neighbouring letters swapped."""
    if len(word) != len(keyword):
        return False
    differences = [index for index, (a, b) in enumerate(zip(word, keyword)) if a != b]
    if len(differences) != 2 or differences[1] != differences[0] + 1:
        return False
    first, second = differences
    return word[first] == keyword[second] and word[second] == keyword[first]


def _suggest_rule_keyword(word: str, keywords: list[str]) -> str | None:
    """Return the keyword that `word` is most likely a misspelling of, or None."""
    if word in keywords:
        return None
    # difflib rates a swap in a short word below the 0.7 cutoff of closest()
    # ('adn' against 'and' is 0.67), so swaps are checked first.
    for keyword in keywords:
        if _is_transposition(word.lower(), keyword):
            return keyword
    return closest(word, keywords)


def _unexpected_token_message(exc: UnexpectedToken) -> str:
    token = exc.token
    if token.type == "$END":
        return "unexpected end of file; a rule is missing its closing '}'"
    expected = set(exc.accepts or exc.expected)
    word = str(token)
    # NOTE: the contextual lexer takes a keyword that starts a longer word as
    # that keyword ('routes' lexes as 'route' and 's'), so such a misspelling
    # is reported at its remainder, with no suggestion.
    if _WORD.fullmatch(word):
        hint = _suggest_rule_keyword(word, _expected_rule_keywords(expected))
        if hint is not None:
            return f"unexpected {word!r}; did you mean {hint!r}?"
    return f"unexpected {word!r}; expected {_describe_expected(expected)}"


def _unterminated_string_message(
    text: str, position: int, column: int
) -> str | None:
    """Describe the string that opens at `position` with no closing quote on its line.

    Returns None when a whole string does start there, so the error lies elsewhere.
    """
    string_pattern = _parser().get_terminal("STRING").pattern.to_regexp()
    if re.compile(string_pattern).match(text, position):
        return None
    line_end = text.find("\n", position)
    if line_end < 0:
        line_end = len(text)
    fragment = text[position:line_end].rstrip("\r")
    excerpt = fragment
    if len(fragment) > _MAX_STRING_EXCERPT:
        excerpt = fragment[:_MAX_STRING_EXCERPT] + "..."
    message = (
        f"string '{excerpt}' starting at column {column} is not closed "
        "before the end of the line; add the closing '\"' on the same line"
    )
    if '\\"' in fragment:
        message += (
            "; '\\\"' inside a string is an escaped quote, "
            "so write '\\\\' for a backslash"
        )
    return message


def _unexpected_character_message(text: str, exc: UnexpectedCharacters) -> str:
    position = exc.pos_in_stream or 0
    char = text[position] if position < len(text) else ""
    if char == '"':
        unterminated = _unterminated_string_message(text, position, exc.column or 1)
        if unterminated is not None:
            return unterminated
    message = f"unexpected character {char!r}"
    if char == "(":
        return message + "; a tag is written (gggg,eeee) with 4 hex digits each"
    if char == "'":
        return message + "; strings take double quotes"
    return message + f"; expected {_describe_expected(set(exc.allowed or ()))}"


def _syntax_finding(file: str, text: str, exc: UnexpectedInput) -> Finding:
    line = getattr(exc, "line", 1) or 1
    column = getattr(exc, "column", 1) or 1
    if isinstance(exc, UnexpectedEOF):
        lines = text.splitlines() or [""]
        line, column = len(lines), len(lines[-1]) + 1
        message = "unexpected end of file; a rule is missing its closing '}'"
    elif isinstance(exc, UnexpectedToken):
        message = _unexpected_token_message(exc)
    elif isinstance(exc, UnexpectedCharacters):
        message = _unexpected_character_message(text, exc)
    else:
        message = str(exc).splitlines()[0]
    return Finding(file, line, column, f"syntax error: {message}")


def decode_string(token: Token, findings: list[Finding], file: str) -> str:
    """Strip the quotes of a STRING token and apply its ``\\\\`` and ``\\"`` escapes."""
    body = str(token)[1:-1]
    out = []
    index = 0
    while index < len(body):
        char = body[index]
        if char == "\\" and index + 1 < len(body):
            following = body[index + 1]
            if following in ('"', "\\"):
                out.append(following)
            else:
                position = _position(token)
                findings.append(
                    Finding(
                        file,
                        position["line"],
                        position["column"] + index + 1,
                        f"unknown escape '\\{following}' in string; "
                        "write '\\\\' for a backslash and '\\\"' for a quote",
                    )
                )
                out.append("\\" + following)
            index += 2
            continue
        out.append(char)
        index += 1
    return "".join(out)


def decode_regex(token: Token) -> tuple[str, str]:
    """Split a ``/pattern/flags`` token into pattern and flags, unescaping ``\\/``."""
    text = str(token)
    end = text.rindex("/")
    pattern = text[1:end].replace("\\/", "/")
    return pattern, text[end + 1 :]


@v_args(meta=True)
class _ToIR(Transformer[Token, list[IR]]):
    """Turn the parse tree into IR dicts."""

    def __init__(self, file: str) -> None:
        super().__init__()
        self.file = file
        self.findings: list[Finding] = []

    def _string(self, token: Token) -> str:
        return decode_string(token, self.findings, self.file)

    def _at(self, meta: Any) -> dict[str, int]:
        if meta is not None and not meta.empty:
            return {"line": meta.line, "column": meta.column}
        return {"line": 1, "column": 1}

    # rules

    def start(self, meta: Any, rules: list[IR]) -> list[IR]:
        return rules

    def rule(self, meta: Any, children: list[Any]) -> IR:
        kind, name, *rest = children
        rule: IR = {
            "kind": kind,
            "name": self._string(name),
            "otherwise": False,
            "phase": "storage",
            "when": None,
            "actions": [],
            "file": self.file,
            **self._at(meta),
        }
        for child in rest:
            tag = child["type"]
            if tag == "for":
                rule["for"] = child["nodes"]
            elif tag == "otherwise":
                rule["otherwise"] = True
            elif tag == "phase":
                rule["phase"] = child["phase"]
                rule["phase_position"] = child["position"]
            elif tag == "when":
                if rule["when"] is not None:
                    rule.setdefault("extra_when", []).append(child["position"])
                rule["when"] = child["condition"]
            else:
                rule["actions"].append(child["action"])
        return rule

    def route(self, meta: Any, _: list[Any]) -> str:
        return "route"

    def mutate(self, meta: Any, _: list[Any]) -> str:
        return "mutate"

    def sort(self, meta: Any, _: list[Any]) -> str:
        return "sort"

    def for_nodes(self, meta: Any, children: list[Any]) -> IR:
        return {"type": "for", "nodes": children[0]}

    def otherwise(self, meta: Any, _: list[Any]) -> IR:
        return {"type": "otherwise"}

    def phase(self, meta: Any, children: list[Token]) -> IR:
        return {"type": "phase", "phase": str(children[0]), "position": _position(children[0])}

    def node_list(self, meta: Any, children: list[Token]) -> list[IR]:
        nodes = []
        for token in children:
            name = self._string(token) if token.type == "STRING" else str(token)
            nodes.append({"name": name, **_position(token)})
        return nodes

    # statements

    def _action(self, meta: Any, action: str, **fields: Any) -> IR:
        return {"type": "action", "action": {"action": action, **fields, **self._at(meta)}}

    def when(self, meta: Any, children: list[Any]) -> IR:
        return {"type": "when", "condition": children[0], "position": self._at(meta)}

    def forward(self, meta: Any, children: list[Any]) -> IR:
        return self._action(meta, "forward", nodes=children[0])

    def drop_original(self, meta: Any, _: list[Any]) -> IR:
        return self._action(meta, "drop_original")

    def drop(self, meta: Any, _: list[Any]) -> IR:
        return self._action(meta, "drop")

    def save(self, meta: Any, children: list[Token]) -> IR:
        return self._action(meta, "save", template=self._string(children[0]))

    def set(self, meta: Any, children: list[Any]) -> IR:
        return self._action(meta, "set", target=children[0], value=children[1])

    def delete_private(self, meta: Any, _: list[Any]) -> IR:
        return self._action(meta, "delete_private")

    def delete(self, meta: Any, children: list[Any]) -> IR:
        return self._action(meta, "delete", target=children[0])

    def replace(self, meta: Any, children: list[Any]) -> IR:
        target, regex, replacement = children
        pattern, flags = decode_regex(regex)
        return self._action(
            meta,
            "replace",
            target=target,
            pattern=pattern,
            flags=flags,
            replacement=self._string(replacement),
        )

    def exclude(self, meta: Any, _: list[Any]) -> IR:
        return self._action(meta, "exclude")

    def sort_by(self, meta: Any, children: list[IR]) -> IR:
        return self._action(meta, "sort_by", keys=children)

    def sort_key(self, meta: Any, children: list[Any]) -> IR:
        key: IR = {"ref": children[0], "type": "string", "direction": "ascending"}
        for token in children[1:]:
            if token.type == "SORT_TYPE":
                key["type"] = str(token)
            else:
                key["direction"] = str(token)
        return key

    # conditions

    def or_test(self, meta: Any, children: list[IR]) -> IR:
        return {"op": "or", "args": children, **self._at(meta)}

    def and_test(self, meta: Any, children: list[IR]) -> IR:
        return {"op": "and", "args": children, **self._at(meta)}

    def not_(self, meta: Any, children: list[IR]) -> IR:
        return {"op": "not", "arg": children[0], **self._at(meta)}

    def _literal(self, token: Token) -> str | int | float:
        if token.type == "STRING":
            return self._string(token)
        text = str(token)
        return float(text) if "." in text else int(text)

    def compare(self, meta: Any, children: list[Any]) -> IR:
        ref, operator, value = children
        return {
            "op": "compare",
            "ref": ref,
            "cmp": str(operator),
            "value": self._literal(value),
            **self._at(meta),
        }

    def matches(self, meta: Any, children: list[Any]) -> IR:
        pattern, flags = decode_regex(children[1])
        return {"op": "matches", "ref": children[0], "pattern": pattern, "flags": flags, **self._at(meta)}

    def like(self, meta: Any, children: list[Any]) -> IR:
        return {"op": "like", "ref": children[0], "value": self._string(children[1]), **self._at(meta)}

    def in_(self, meta: Any, children: list[Any]) -> IR:
        return {"op": "in", "ref": children[0], "values": children[1], **self._at(meta)}

    def value_list(self, meta: Any, children: list[Token | None]) -> list[Any]:
        return [self._literal(token) for token in children if token is not None]

    def _text_test(self, op: str, meta: Any, children: list[Any]) -> IR:
        return {"op": op, "ref": children[0], "value": self._literal(children[1]), **self._at(meta)}

    def contains(self, meta: Any, children: list[Any]) -> IR:
        return self._text_test("contains", meta, children)

    def startswith(self, meta: Any, children: list[Any]) -> IR:
        return self._text_test("startswith", meta, children)

    def endswith(self, meta: Any, children: list[Any]) -> IR:
        return self._text_test("endswith", meta, children)

    def exists(self, meta: Any, children: list[Any]) -> IR:
        return {"op": "exists", "ref": children[0], **self._at(meta)}

    def missing(self, meta: Any, children: list[Any]) -> IR:
        return {"op": "missing", "ref": children[0], **self._at(meta)}

    def where(self, meta: Any, children: list[Any]) -> IR:
        return {"op": "where", "ref": children[0], "condition": children[1], **self._at(meta)}

    # references

    def ref(self, meta: Any, segments: list[IR]) -> IR:
        text = ".".join(segment["text"] for segment in segments)
        return {"text": text, "path": segments, **self._at(meta)}

    def segment(self, meta: Any, children: list[Any]) -> IR:
        token = children[0]
        segment: IR = {"text": str(token)}
        if token.type == "TAG":
            segment["tag"] = str(token)
        else:
            segment["name"] = str(token)
        if len(children) > 1:
            index = children[1]
            segment["index"] = index
            segment["text"] += f"[{index}]"
        return segment

    def index(self, meta: Any, children: list[Token]) -> str | int:
        token = children[0]
        return "*" if token.type == "STAR" else int(str(token))

    # expressions

    def template(self, meta: Any, children: list[Token]) -> IR:
        return {"template": self._string(children[0]), **_position(children[0])}

    def number(self, meta: Any, children: list[Token]) -> IR:
        return {"number": self._literal(children[0]), **_position(children[0])}

    def ref_expr(self, meta: Any, children: list[IR]) -> IR:
        return {"ref": children[0], **self._at(meta)}

    def call(self, meta: Any, children: list[Any]) -> IR:
        name, *args = children
        return {"call": str(name), "args": [a for a in args if a is not None], **self._at(meta)}


def parse_rules(text: str, file: str = "<rules>") -> list[IR]:
    """Parse `text` into a list of rule IR dicts.

    Raises
    ------
    RuleError
        On a syntax error or a malformed string, with file, line and column.
    """
    try:
        tree = _parser().parse(text, start="start")
    except UnexpectedInput as exc:
        raise RuleError([_syntax_finding(file, text, exc)]) from None
    transformer = _ToIR(file)
    rules = transformer.transform(tree)
    for rule in rules:
        if rule.get("extra_when"):
            position = rule["extra_when"][0]
            transformer.findings.append(
                Finding(file, position["line"], position["column"],
                        f"rule {rule['name']!r} has more than one 'when'; join the conditions with 'and'")
            )
    if transformer.findings:
        raise RuleError(transformer.findings)
    for rule in rules:
        rule.pop("extra_when", None)
    return rules


def parse_reference(text: str, where: IR) -> IR | None:
    """Parse `text` as a lone reference (a placeholder's inside); None if it is not one.

    The returned IR takes its position from `where`.
    """
    try:
        tree = _parser().parse(text, start="ref")
    except UnexpectedInput:
        return None
    transformer = _ToIR("<placeholder>")
    ref: IR = transformer.transform(tree)  # type: ignore[assignment]
    ref["line"] = where.get("line", 1)
    ref["column"] = where.get("column", 1)
    return ref
