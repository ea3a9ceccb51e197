"""Subgroup predicates submitted as data: parsing, limits, a canonical form and evaluation.

An outside evaluator names a subgroup of a model's traffic as a small tree over the declared
slice dimensions::

    {"all": [{"dim": "accent", "in": ["scottish", "nigerian-english"]}, {"dim": "noise", "eq": "ward-b"}]}

or in the equivalent text form ``accent in {scottish, nigerian-english} and noise = ward-b``.

Nodes are ``{"all": [...]}``, ``{"any": [...]}``, ``{"not": node}`` and leaves
``{"dim": d, OP: x}`` with exactly one ``OP`` of ``eq`` (a value), ``in`` / ``not_in`` (a
non-empty list of values) or ``missing`` (a boolean). Values are compared as lastmile compares
event attributes (:func:`monitor.events.scalar_text`): strings as they are, numbers and booleans
as their text. A missing attribute is the value ``unknown``, so ``missing: true`` is
``eq: "unknown"``.

Nothing from a submission is ever evaluated, executed, compiled, unpickled or used as a
regular expression, a format string or a name to look up: the text form is read by a
hand-written scanner and recursive-descent parser, values are only ever compared for equality
or membership in frozensets, and :func:`compile_predicate` builds plain closures. Every input is
bounded (:class:`Limits`) before it is walked, and recursion is bounded by ``max_depth``, so a
hostile submission costs little and fails with a :class:`PredicateError` naming where.

The canonical form flattens nested ``all``/``any``, sorts and dedupes children and values,
turns a one-value ``in`` into ``eq``, removes double negation and folds a ``not`` over a leaf
into the leaf (``not eq x`` is ``not_in [x]``; ``eq "unknown"`` is ``missing: true``), so
equivalent spellings get the same :func:`hypothesis_id`.

>>> tree = parse_group("not (noise != ward-b) and accent in {scottish}", ("accent", "noise"))
>>> canonical_json(tree)
'{"all":[{"dim":"accent","eq":"scottish"},{"dim":"noise","eq":"ward-b"}]}'
>>> to_text(tree)
'accent = scottish and noise = ward-b'
>>> compile_predicate(tree, ("accent", "noise"))({"accent": "scottish", "noise": "ward-b"})
True
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from monitor.events import UNKNOWN, scalar_text

MAX_DEPTH = 8  # nodes on the way from the root to a leaf, both included
MAX_LEAVES = 32
MAX_VALUES = 64  # per ``in`` / ``not_in``
MAX_VALUE_CHARS = 200
MAX_TEXT_CHARS = 4096
_DEPTH_CEILING = 100  # recursion stays far below Python's limit whatever the caller configures
_SHOW = 40  # characters of user input quoted in a message

_OPS = ("eq", "in", "not_in", "missing")
_KEYWORDS = frozenset({"and", "or", "not", "in", "is", "missing"})
_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:/@+-")
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "r": "\r"}
_QUOTE_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}

Tree = dict[str, Any]
Predicate = Callable[[Mapping[str, str]], bool]


@dataclass(frozen=True)
class Limits:
    max_depth: int = MAX_DEPTH
    max_leaves: int = MAX_LEAVES
    max_values: int = MAX_VALUES
    max_value_chars: int = MAX_VALUE_CHARS
    max_text_chars: int = MAX_TEXT_CHARS

    def __post_init__(self) -> None:
        for name in ("max_depth", "max_leaves", "max_values", "max_value_chars", "max_text_chars"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"Limits.{name} must be a positive integer, got {value!r}")
        if self.max_depth > _DEPTH_CEILING:
            raise ValueError(f"Limits.max_depth must be at most {_DEPTH_CEILING}, got {self.max_depth}")


DEFAULT_LIMITS = Limits()
#: re-normalising a tree the caller already holds (it came from parse_group, maybe with wider limits)
_TRUSTED = Limits(max_depth=_DEPTH_CEILING, max_leaves=10**6, max_values=10**6, max_value_chars=10**6)


class PredicateError(ValueError):
    """A submission that is not a valid predicate; ``path`` says where (a JSON path, or a text position)."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


def _show(value: Any) -> str:
    """A bounded quotation of user input for a message."""
    text = value if isinstance(value, str) else type(value).__name__
    if len(text) > _SHOW:
        return repr(text[:_SHOW]) + f"… ({len(text)} characters)"
    return repr(text)


def _describe(value: Any) -> str:
    """What a wrong value is, without quoting much of it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return f"the string {_show(value)}"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


# ---- checks shared by the JSON and text forms -----------------------------------------------------
class _Checker:
    def __init__(self, dimensions: Iterable[str] | None, limits: Limits):
        if isinstance(dimensions, str):
            raise TypeError("dimensions is a collection of dimension names, not one string")
        self.dimensions = None if dimensions is None else frozenset(dimensions)
        self.limits = limits
        self.leaves = 0

    def dimension(self, name: Any, where: str) -> str:
        if not isinstance(name, str) or not name:
            raise PredicateError(where, f"'dim' must be a dimension name (a non-empty string), got {_describe(name)}")
        if self.dimensions is not None and name not in self.dimensions:
            declared = ", ".join(sorted(self.dimensions)) or "none"
            raise PredicateError(where, f"unknown dimension {_show(name)} (declared: {declared})")
        return name

    def value(self, value: Any, where: str) -> str:
        if isinstance(value, (str, bool, int, float)):
            try:
                text = scalar_text(value)
            except TypeError:
                raise PredicateError(where, f"{value!r} is not a finite number") from None
            except ValueError:  # an integer too long for str()
                raise PredicateError(where, f"a value longer than {self.limits.max_value_chars} characters") from None
            assert text is not None
            if not text:
                raise PredicateError(where, "an empty value; use 'missing: true' for events without one")
            if len(text) > self.limits.max_value_chars:
                raise PredicateError(where, f"a value longer than {self.limits.max_value_chars} characters"
                                            f" (got {len(text)})")
            if not text.isprintable():  # control and bidi characters would reach logs and chat messages
                raise PredicateError(where, "a value with non-printable characters (control or bidi)")
            return text
        raise PredicateError(where, f"a value is a string, number or boolean, got {_describe(value)}")

    def values(self, op: str, values: Any, where: str) -> list[str]:
        if not isinstance(values, (list, tuple)) or not values:
            raise PredicateError(where, f"'{op}' needs a non-empty list of values, got {_describe(values)}")
        if len(values) > self.limits.max_values:
            raise PredicateError(where, f"more than {self.limits.max_values} values in '{op}' (got {len(values)})")
        return [self.value(v, f"{where}[{i}]") for i, v in enumerate(values)]

    def leaf(self, where: str) -> None:
        self.leaves += 1
        if self.leaves > self.limits.max_leaves:
            raise PredicateError(where, f"more than {self.limits.max_leaves} leaves")

    def too_deep(self, where: str) -> PredicateError:
        return PredicateError(where, f"nested deeper than {self.limits.max_depth} levels")


# ---- the JSON form ---------------------------------------------------------------------------------
def _check_tree(node: Any, path: str, check: _Checker, depth: int = 1) -> Tree:
    """A validated copy of a submitted tree (values normalised to text), not yet canonical."""
    if depth > check.limits.max_depth:
        raise check.too_deep(path)
    if not isinstance(node, dict):
        raise PredicateError(path, f"a condition is an object, got {_describe(node)}")
    if "dim" in node:
        return _check_leaf(node, path, check)
    if len(node) != 1:
        keys = ", ".join(_show(k) for k in list(node)[:2]) + (", …" if len(node) > 2 else "")
        what = "an empty object" if not node else f"keys {keys}"
        raise PredicateError(path, f"a condition is one of 'all', 'any', 'not' or a leaf with 'dim', got {what}")
    (key, child), = node.items()
    if key == "not":
        return {"not": _check_tree(child, f"{path}.not", check, depth + 1)}
    if key in ("all", "any"):
        if not isinstance(child, (list, tuple)) or not child:
            raise PredicateError(f"{path}.{key}", f"'{key}' needs a non-empty list of conditions, got {_describe(child)}")
        if len(child) > check.limits.max_leaves:  # each condition holds a leaf at least
            raise PredicateError(f"{path}.{key}", f"more than {check.limits.max_leaves} leaves")
        return {key: [_check_tree(c, f"{path}.{key}[{i}]", check, depth + 1) for i, c in enumerate(child)]}
    if key in _OPS:
        raise PredicateError(path, f"a leaf with {_show(key)} needs 'dim' naming the dimension")
    raise PredicateError(path, f"unknown operator {_show(key) if isinstance(key, str) else _describe(key)}"
                               " (expected 'all', 'any', 'not' or a leaf with 'dim')")


def _check_leaf(node: dict[Any, Any], path: str, check: _Checker) -> Tree:
    if len(node) > 3:
        raise PredicateError(path, f"a leaf has 'dim' and exactly one of {', '.join(_OPS)}; got {len(node)} keys")
    ops = [k for k in node if k in _OPS]
    extra = [k for k in node if k != "dim" and k not in _OPS]
    if extra:
        key = extra[0]
        raise PredicateError(path, f"unexpected key {_show(key) if isinstance(key, str) else _describe(key)} in a leaf"
                                   f" (a leaf has 'dim' and one of {', '.join(_OPS)})")
    if not ops:
        raise PredicateError(path, f"a leaf needs one of {', '.join(_OPS)}")
    if len(ops) > 1:
        raise PredicateError(path, f"a leaf has exactly one operator, got '{ops[0]}' and '{ops[1]}'")
    check.leaf(path)
    dim = check.dimension(node["dim"], f"{path}.dim")
    op = ops[0]
    arg = node[op]
    where = f"{path}.{op}"
    if op == "missing":
        if not isinstance(arg, bool):
            raise PredicateError(where, f"'missing' is true or false, got {_describe(arg)}")
        return {"dim": dim, "missing": arg}
    if op == "eq":
        return {"dim": dim, "eq": check.value(arg, where)}
    return {"dim": dim, op: check.values(op, arg, where)}


# ---- the text form ---------------------------------------------------------------------------------
class _Token:
    __slots__ = ("kind", "text", "pos")

    def __init__(self, kind: str, text: str, pos: int):
        self.kind = kind  # "word" | "string" | "end" | one of ( ) { } , = !=
        self.text = text
        self.pos = pos

    def keyword(self) -> str | None:
        return self.text.lower() if self.kind == "word" and self.text.lower() in _KEYWORDS else None

    def describe(self) -> str:
        if self.kind == "end":
            return "the end of the text"
        if self.kind in ("word", "string"):
            return _show(self.text)
        return f"'{self.kind}'"


def _scan(text: str, at: Callable[[int], str]) -> list[_Token]:
    """Tokens of the text form, by hand: bare words, quoted strings and punctuation."""
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "(){},=":
            tokens.append(_Token(c, c, i))
            i += 1
        elif c == "!":
            if text.startswith("!=", i):
                tokens.append(_Token("!=", "!=", i))
                i += 2
            else:
                raise PredicateError(at(i), "'!' must be followed by '=' ('!=' means not equal)")
        elif c in _BARE:
            start = i
            while i < n and text[i] in _BARE:
                i += 1
            tokens.append(_Token("word", text[start:i], start))
        elif c in "\"'":
            start, i = i, i + 1
            chars: list[str] = []
            while True:
                if i >= n:
                    raise PredicateError(at(start), f"unterminated string (no closing {c})")
                stop = min(j for j in (text.find(c, i), text.find("\\", i), n) if j >= 0)
                chars.append(text[i:stop])  # a run of plain characters
                i = stop
                if i >= n:
                    continue
                if text[i] == c:
                    i += 1
                    break
                if i + 1 >= n:
                    raise PredicateError(at(i), "a backslash at the end of the text")
                escaped = _ESCAPES.get(text[i + 1])
                if escaped is None:
                    raise PredicateError(at(i), f"unknown escape {_show(text[i:i + 2])}"
                                                " (use \\\\, \\\", \\', \\n, \\t or \\r)")
                chars.append(escaped)
                i += 2
            tokens.append(_Token("string", "".join(chars), start))
        else:
            raise PredicateError(at(i), f"unexpected character {_show(c)}")
    tokens.append(_Token("end", "", n))
    return tokens


class _Parser:
    """Recursive descent over the tokens; precedence ``not`` > ``and`` > ``or``.

    Each node it builds carries its height (nodes down to the deepest leaf) so the depth limit
    reads as it does for the JSON form; parentheses and ``not`` are also bounded by it, which
    bounds the recursion."""

    def __init__(self, text: str, path: str, check: _Checker):
        self.path = path
        self.check = check
        self.tokens = _scan(text, self.at)
        self.i = 0
        self.nesting = 0

    def at(self, pos: int) -> str:
        return f"{self.path} (at char {pos})"

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        token = self.tokens[self.i]
        if token.kind != "end":
            self.i += 1
        return token

    def expect(self, kind: str, what: str) -> _Token:
        token = self.take()
        if token.kind != kind:
            raise PredicateError(self.at(token.pos), f"expected {what}, got {token.describe()}")
        return token

    def parse(self) -> Tree:
        tree, _ = self.expression()
        token = self.peek()
        if token.kind != "end":
            hint = " (no '(' to close)" if token.kind == ")" else " (join conditions with 'and' / 'or')"
            raise PredicateError(self.at(token.pos), f"unexpected {token.describe()}{hint}")
        return tree

    def shaped(self, node: Tree, height: int, pos: int) -> tuple[Tree, int]:
        if height > self.check.limits.max_depth:
            raise self.check.too_deep(self.at(pos))
        return node, height

    def expression(self) -> tuple[Tree, int]:
        return self.chain("or", "any", self.conjunction)

    def conjunction(self) -> tuple[Tree, int]:
        return self.chain("and", "all", self.unary)

    def chain(self, word: str, op: str, operand: Callable[[], tuple[Tree, int]]) -> tuple[Tree, int]:
        pos = self.peek().pos
        first, height = operand()
        if self.peek().keyword() != word:
            return first, height
        children = [first]
        while self.peek().keyword() == word:
            self.take()
            child, h = operand()
            children.append(child)
            height = max(height, h)
        return self.shaped({op: children}, height + 1, pos)

    def nest(self, pos: int) -> None:
        self.nesting += 1
        if self.nesting > self.check.limits.max_depth:
            raise PredicateError(self.at(pos), f"nested deeper than {self.check.limits.max_depth} levels"
                                               " (counting parentheses and 'not')")

    def unary(self) -> tuple[Tree, int]:
        token = self.peek()
        if token.keyword() == "not":
            self.take()
            self.nest(token.pos)
            child, height = self.unary()
            self.nesting -= 1
            return self.shaped({"not": child}, height + 1, token.pos)
        if token.kind == "(":
            self.take()
            self.nest(token.pos)
            inner = self.expression()
            self.nesting -= 1
            close = self.take()
            if close.kind != ")":
                raise PredicateError(self.at(close.pos), f"expected ')' to close the '(' at char {token.pos},"
                                                         f" got {close.describe()}")
            return inner
        return self.comparison()

    def comparison(self) -> tuple[Tree, int]:
        token = self.take()
        if token.kind not in ("word", "string") or token.keyword() is not None:
            raise PredicateError(self.at(token.pos), f"expected a dimension name, 'not' or '(', got {token.describe()}")
        self.check.leaf(self.at(token.pos))
        dim = self.check.dimension(token.text, self.at(token.pos))
        op = self.take()
        word = op.keyword()
        if op.kind == "=":
            return {"dim": dim, "eq": self.value()}, 1
        if op.kind == "!=":
            return {"dim": dim, "not_in": [self.value()]}, 1
        if word == "in":
            return {"dim": dim, "in": self.value_set("in", op.pos)}, 1
        if word == "not":
            self.expect_keyword("in", "'in' after 'not'")
            return {"dim": dim, "not_in": self.value_set("not_in", op.pos)}, 1
        if word == "is":
            negated = self.peek().keyword() == "not"
            if negated:
                self.take()
            self.expect_keyword("missing", "'missing' after 'is'" + (" not" if negated else ""))
            return {"dim": dim, "missing": not negated}, 1
        raise PredicateError(self.at(op.pos), f"expected '=', '!=', 'in', 'not in' or 'is [not] missing' after"
                                              f" the dimension, got {op.describe()}")

    def expect_keyword(self, word: str, what: str) -> None:
        token = self.take()
        if token.keyword() != word:
            raise PredicateError(self.at(token.pos), f"expected {what}, got {token.describe()}")

    def value(self) -> str:
        token = self.take()
        if token.kind not in ("word", "string"):
            raise PredicateError(self.at(token.pos), f"expected a value, got {token.describe()}")
        return self.check.value(token.text, self.at(token.pos))

    def value_set(self, op: str, pos: int) -> list[str]:
        self.expect("{", f"'{{' opening the values of '{op}'")
        if self.peek().kind == "}":
            raise PredicateError(self.at(pos), f"'{op}' needs a non-empty list of values")
        values = [self.value()]
        while self.peek().kind == ",":
            comma = self.take()
            if len(values) >= self.check.limits.max_values:
                raise PredicateError(self.at(comma.pos), f"more than {self.check.limits.max_values} values in '{op}'")
            values.append(self.value())
        self.expect("}", "',' or '}'")
        return values


# ---- the canonical form ----------------------------------------------------------------------------
def _leaf(dim: str, op: str, arg: Any) -> Tree:
    """A leaf in canonical form."""
    if op in ("in", "not_in"):
        values = sorted(set(arg))
        if op == "in" and len(values) == 1:
            op, arg = "eq", values[0]
        elif op == "not_in" and values == [UNKNOWN]:
            op, arg = "missing", False
        else:
            arg = values
    if op == "eq" and arg == UNKNOWN:
        op, arg = "missing", True
    return {"dim": dim, op: arg}


def _negate(node: Tree) -> Tree:
    if "not" in node:
        return node["not"]  # type: ignore[no-any-return]
    if "dim" in node:
        dim = node["dim"]
        if "eq" in node:
            return _leaf(dim, "not_in", [node["eq"]])
        if "in" in node:
            return _leaf(dim, "not_in", node["in"])
        if "not_in" in node:
            return _leaf(dim, "in", node["not_in"])
        return _leaf(dim, "missing", not node["missing"])
    return {"not": node}


def _canonical(node: Tree) -> Tree:
    """The canonical form of a checked tree (see the module docstring)."""
    if "dim" in node:
        op = next(k for k in _OPS if k in node)
        return _leaf(node["dim"], op, node[op])
    if "not" in node:
        return _negate(_canonical(node["not"]))
    (op, children), = node.items()
    flat: dict[str, Tree] = {}
    for child in children:
        c = _canonical(child)
        for part in c.get(op, [c]):
            flat.setdefault(_dumps(part), part)
    if len(flat) == 1:
        return next(iter(flat.values()))
    return {op: [flat[key] for key in sorted(flat)]}


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


# ---- the public API ---------------------------------------------------------------------------------
def parse_group(group: Any, dimensions: Iterable[str], *, path: str = "$.group", limits: Limits = DEFAULT_LIMITS) -> Tree:
    """The canonical tree of a submitted group: a JSON tree (a dict) or the text form (a str).

    ``dimensions`` are the declared dimension names; ``path`` prefixes every error's location.
    Raises :class:`PredicateError` for anything that is not a valid predicate within ``limits``.
    """
    check = _Checker(dimensions, limits)
    if isinstance(group, str):
        if len(group) > limits.max_text_chars:
            raise PredicateError(f"{path} (at char {limits.max_text_chars})",
                                 f"the text is longer than {limits.max_text_chars} characters (got {len(group)})")
        if not group.strip():
            raise PredicateError(f"{path} (at char 0)", "an empty condition")
        tree = _Parser(group, path, check).parse()
    else:
        tree = _check_tree(group, path, check)
    return _canonical(tree)


def _trusted(tree: Tree) -> Tree:
    """Re-normalise a tree the caller holds (no dimension check; it came through parse_group)."""
    return _canonical(_check_tree(tree, "$", _Checker(None, _TRUSTED)))


def canonical_json(tree: Tree) -> str:
    """Compact JSON with sorted keys of the canonical form of ``tree`` (ASCII, so hashing is stable)."""
    return _dumps(_trusted(tree))


def hypothesis_id(model: str, tree: Tree, claim: Mapping[str, Any]) -> str:
    """16 hex digits naming the hypothesis "``claim`` holds for this group of ``model``'s traffic"."""
    if not isinstance(model, str):
        raise TypeError(f"model is a string, got {type(model).__name__}")
    if not isinstance(claim, Mapping):
        raise TypeError(f"claim is a mapping, got {type(claim).__name__}")
    payload = _dumps({"model": model, "group": _trusted(tree), "claim": dict(claim)})
    return hashlib.sha256(payload.encode("ascii")).hexdigest()[:16]


def compile_predicate(tree: Any, dimensions: Iterable[str], *, limits: Limits = DEFAULT_LIMITS) -> Predicate:
    """Membership test for events: takes the event's ``dimension → value`` (missing is ``unknown``).

    ``tree`` may be any form :func:`parse_group` accepts; it is checked against ``dimensions``.
    A dimension absent from the mapping, or an empty value, reads as ``unknown``, as in routing.
    """
    return _build(parse_group(tree, dimensions, limits=limits))


def implied_values(tree: Tree) -> dict[str, str]:
    """The ``dimension = value`` pairs every member of the group has: those of its top-level
    ``eq`` (and ``missing: true``) leaves. The tracked slices with only these pairs contain
    the group, so they are where its baseline comes from.

    >>> implied_values({"all": [{"dim": "accent", "in": ["a", "b"]}, {"dim": "noise", "eq": "ward-b"}]})
    {'noise': 'ward-b'}
    """
    node = _trusted(tree)
    out: dict[str, str] = {}
    for leaf in node.get("all", [node]):
        if "dim" in leaf and "eq" in leaf:
            out.setdefault(leaf["dim"], leaf["eq"])
        elif "dim" in leaf and leaf.get("missing") is True:
            out.setdefault(leaf["dim"], UNKNOWN)
    return out


def _build(node: Tree) -> Predicate:
    if "dim" in node:
        dim = node["dim"]

        def value(event: Mapping[str, str]) -> str:
            v = event.get(dim)
            return v if v else UNKNOWN

        if "eq" in node:
            target: str = node["eq"]
            return lambda event: value(event) == target
        if "missing" in node:
            missing: bool = node["missing"]
            return lambda event: (value(event) == UNKNOWN) is missing
        members = frozenset(node["in"] if "in" in node else node["not_in"])
        if "in" in node:
            return lambda event: value(event) in members
        return lambda event: value(event) not in members
    if "not" in node:
        inner = _build(node["not"])
        return lambda event: not inner(event)
    (op, children), = node.items()
    parts = tuple(_build(c) for c in children)
    if op == "all":
        return lambda event: all(p(event) for p in parts)
    return lambda event: any(p(event) for p in parts)


def _quote(text: str) -> str:
    if all(c in _BARE for c in text) and text and text.lower() not in _KEYWORDS:
        return text
    return '"' + "".join(_QUOTE_ESCAPES.get(c, c) for c in text) + '"'


def to_text(tree: Tree) -> str:
    """The canonical form of ``tree`` in the text form; :func:`parse_group` reads it back to the same tree."""
    return _text(_trusted(tree))


def _text(node: Tree) -> str:
    if "dim" in node:
        dim = _quote(node["dim"])
        if "eq" in node:
            return f"{dim} = {_quote(node['eq'])}"
        if "missing" in node:
            return f"{dim} is missing" if node["missing"] else f"{dim} is not missing"
        if "not_in" in node and len(node["not_in"]) == 1:
            return f"{dim} != {_quote(node['not_in'][0])}"
        op = "in" if "in" in node else "not in"
        values = node["in"] if "in" in node else node["not_in"]
        return f"{dim} {op} {{{', '.join(_quote(v) for v in values)}}}"
    if "not" in node:
        return f"not ({_text(node['not'])})"  # a canonical 'not' holds an 'all' or 'any'
    (op, children), = node.items()
    return f" {'and' if op == 'all' else 'or'} ".join(
        f"({_text(c)})" if ("all" in c or "any" in c) else _text(c) for c in children)
