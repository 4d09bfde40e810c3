"""Go's regular expressions, as Bacalhau compiles a partition `Pattern`, through RE2 (`google-re2`).

Go's `regexp` is RE2's syntax and leftmost-first matching (its parser is a port of RE2's), so Google's RE2
binding matches patterns as Go does, where Python's `re` would not (`(?U)`, possessive or look-around
syntax, backtracking). RE2's error codes are mapped to Go's texts (`error parsing regexp: missing closing
): `(``), and the two places where today's RE2 is more lenient than Go's parser are checked first: `\\C`
(any byte: Go refuses it) and `(?<` not followed by a valid name and `>` (Go reads it as a named capture,
so look-behind is an invalid named capture there).
"""

from __future__ import annotations

import functools
import re
from typing import Any

__all__ = ["GoRegexpError", "compile_go_regexp"]

_GO_CODES = {
    "invalid escape sequence": "invalid escape sequence",
    "invalid character class": "invalid character class",
    "invalid character class range": "invalid character class range",
    "missing ]": "missing closing ]",
    "missing )": "missing closing )",
    "unexpected )": "unexpected )",
    "trailing \\": "trailing backslash at end of expression",
    "no argument for repetition operator": "missing argument to repetition operator",
    "invalid repetition size": "invalid repeat count",
    "bad repetition operator": "invalid nested repetition operator",
    "invalid perl operator": "invalid or unsupported Perl syntax",
    "invalid UTF-8": "invalid UTF-8",
    "invalid named capture group": "invalid named capture",
    "pattern too large - compile failed": "expression too large",
    "pattern too large - reverse compile failed": "expression too large",
}
_NAME = re.compile(r"[0-9A-Za-z_]+")
_PROBLEMS_AT_END = ("missing )", "missing ]")  # what cutting a pattern short causes


class GoRegexpError(ValueError):
    """A pattern Go's `regexp.Compile` refuses, with Go's error text."""


def _go_only(pattern: str) -> tuple[int, str] | None:
    """Where and why Go refuses a pattern today's RE2 takes: `\\C`, or a `(?<` that is no valid name."""
    i, n, in_class = 0, len(pattern), False
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            if pattern[i + 1] == "Q":  # quoted text up to \E, or to the end
                end = pattern.find("\\E", i + 2)
                i = n if end < 0 else end + 2
                continue
            if pattern[i + 1] == "C":
                return i, "invalid escape sequence: `\\C`"
            i += 2
        elif in_class:
            if pattern.startswith("[:", i) and (end := pattern.find(":]", i + 2)) >= 0:
                i = end + 2
                continue
            in_class = c != "]"
            i += 1
        elif c == "[":
            in_class = True
            i += 1
            i += 1 if pattern.startswith("^", i) else 0
            i += 1 if pattern.startswith("]", i) else 0  # a leading ] is a literal
        elif pattern.startswith("(?<", i):
            end = pattern.find(">", i)
            if end < 0 or not _NAME.fullmatch(pattern[i + 3 : end]):
                return i, f"invalid named capture: `{pattern[i:] if end < 0 else pattern[i : end + 1]}`"
            i = end + 1
        else:
            i += 1
    return None


def _re2_error(re2: Any, pattern: str, options: Any) -> tuple[str, str] | None:
    """RE2's (code, fragment) for a pattern it refuses, else None."""
    try:
        re2.compile(pattern, options)
    except re2.error as exc:
        raw = exc.args[0] if exc.args else b""
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        code, _, fragment = text.partition(": ")
        return code, fragment
    return None


@functools.lru_cache(maxsize=256)
def compile_go_regexp(pattern: str) -> Any:
    """The compiled pattern (RE2: `search(text)` gives a match whose unmatched groups are None), or
    `GoRegexpError` with the text Go gives for it."""
    import re2

    options = re2.Options()
    options.log_errors = False  # RE2 would print each refusal on stderr
    go_only = _go_only(pattern)
    if go_only is not None:  # an RE2 error earlier in the pattern is still the one Go reports first
        at, message = go_only
        earlier = _re2_error(re2, pattern[:at], options)
        if earlier is None or earlier[0] in _PROBLEMS_AT_END:
            raise GoRegexpError(f"error parsing regexp: {message}")
    problem = _re2_error(re2, pattern, options)
    if problem is None:
        return re2.compile(pattern, options)
    code, fragment = problem
    message = f"{_GO_CODES.get(code, code)}: `{fragment}`" if fragment else _GO_CODES.get(code, code)
    raise GoRegexpError(f"error parsing regexp: {message}")
