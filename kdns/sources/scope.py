"""What kdns serves of its sources: `--namespace` and `--label-selector`, one rule for all.

The cluster watch asks the API server for the scope (namespaced list/watch paths, the
`labelSelector` parameter), so nothing outside it ever arrives. The zones/ files hold whatever was
written, so the file source drops what falls outside the scope with `Scope.admits` before its
objects reach the store. Every consumer reads the store (answers, PTR, AXFR, `kdns records`,
`kdns explain`, the large-answer encoder, the caches), so none of them needs to know the scope.

As in CoreDNS's `namespaces` option, a namespace that is not served does not exist: its services,
endpoints, PTR records, pod names and `<ns>.svc.<zone>` itself are NXDOMAIN. A label selector
applies to Services, as on the watch: a served namespace exists, and keeps its endpoint objects,
whether or not its services match; the endpoints of a service that is not selected join nothing
and so answer nothing.

The selector syntax is Kubernetes's own (`k8s.io/apimachinery/pkg/labels.Parse`), parsed here the
way the API server parses it, so a selector selects the same services from files as from the
watch, and one the API server would reject is refused at startup rather than retried forever:

    key=value  key==value  key!=value  key in (a,b)  key notin (a,b)  key  !key  key>1  key<1

separated by commas, all of which must hold. `!=` and `notin` hold for a label that is absent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kdns.config import ConfigError
from kdns.state.model import KubeObject, Namespace, Service


class ScopeError(ConfigError):
    """A `--namespace` or `--label-selector` that cannot work (a selector the API server would
    reject); the message is one line."""


#: A DNS-1123 label: what a namespace name must be.
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
#: The name part of a label key, and a label value (which may also be empty).
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_INT64 = re.compile(r"[+-]?[0-9]+")

# The lexer's tokens, as apimachinery names them.
_IDENT, _IN, _NOTIN, _NOT, _EQ, _EQ2, _NE, _GT, _LT, _OPEN, _CLOSE, _COMMA, _END = (
    "identifier",
    "in",
    "notin",
    "!",
    "=",
    "==",
    "!=",
    ">",
    "<",
    "(",
    ")",
    ",",
    "end of string",
)
_SYMBOLS = ("!=", "==", "!", "=", ">", "<", "(", ")", ",")
_SPECIAL = frozenset("!=><(),")
_OPERATORS = {_IN, _NOTIN, _EQ, _EQ2, _NE, _GT, _LT}


@dataclass(frozen=True, slots=True)
class Requirement:
    """One term of a selector: `key op values`."""

    key: str
    #: "in" (for `=`, `==` and `in`), "notin" (`!=`, `notin`), "exists", "!", ">", "<".
    op: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether labels satisfy this term, as `labels.Requirement.Matches` decides."""
        value = labels.get(self.key)
        op = self.op
        if op == "exists":
            return value is not None
        if op == "!":
            return value is None
        if op == "in":
            return value is not None and value in self.values
        if op == "notin":
            return value is None or value not in self.values
        have = _int64(value) if value is not None else None
        if have is None:
            return False
        (want,) = (int(v) for v in self.values)
        return have > want if op == ">" else have < want


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A parsed Kubernetes label selector; `text` is what the user wrote."""

    text: str
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        """True when every requirement holds (an empty selector matches everything)."""
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        return self.text


def _int64(text: str) -> int | None:
    # strconv.ParseInt(text, 10, 64): no spaces or underscores, which Python's int() allows.
    if not _INT64.fullmatch(text):
        return None
    value = int(text)
    return value if -(1 << 63) <= value < (1 << 63) else None


def _tokens(text: str) -> list[tuple[str, str]]:
    """(token, literal) pairs, ending with the end of string."""
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        ch = text[pos]
        if ch.isspace():
            pos += 1
            continue
        if ch in _SPECIAL:
            symbol = next(s for s in _SYMBOLS if text.startswith(s, pos))
            out.append((symbol, symbol))
            pos += len(symbol)
            continue
        end = pos
        while end < len(text) and not text[end].isspace() and text[end] not in _SPECIAL:
            end += 1
        word = text[pos:end]
        out.append((word if word in (_IN, _NOTIN) else _IDENT, word))
        pos = end
    out.append((_END, ""))
    return out


class _Parser:
    """apimachinery's recursive-descent parser, with its error messages."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self, values: bool = True) -> tuple[str, str]:
        tok, lit = self.tokens[self.pos]
        # Where a value or key is expected, `in` and `notin` are plain words.
        if values and tok in (_IN, _NOTIN):
            tok = _IDENT
        return tok, lit

    def take(self, values: bool = True) -> tuple[str, str]:
        out = self.peek(values)
        self.pos += 1
        return out

    def parse(self) -> list[Requirement]:
        out: list[Requirement] = []
        while True:
            tok, lit = self.peek()
            if tok == _END:
                return out
            if tok not in (_IDENT, _NOT):
                raise ScopeError(f"found '{lit}', expected: !, identifier, or 'end of string'")
            out.append(self.requirement())
            tok, lit = self.take()
            if tok == _END:
                return out
            if tok != _COMMA:
                raise ScopeError(f"found '{lit}', expected: ',' or 'end of string'")
            tok, lit = self.peek()
            if tok not in (_IDENT, _NOT):
                raise ScopeError(f"found '{lit or tok}', expected: identifier after ','")

    def requirement(self) -> Requirement:
        tok, lit = self.take()
        negated = tok == _NOT
        if negated:
            tok, lit = self.take()
        if tok != _IDENT:
            raise ScopeError(f"found '{lit or tok}', expected: identifier")
        key = _check_key(lit)
        if negated:
            return Requirement(key, "!")
        if self.peek()[0] in (_END, _COMMA):
            return Requirement(key, "exists")
        tok, lit = self.take(values=False)
        if tok not in _OPERATORS:
            raise ScopeError(
                f"found '{lit}', expected: =, !=, ==, in, notin, >, < after key {key!r}"
            )
        values = self.values() if tok in (_IN, _NOTIN) else self.exact()
        for value in values:
            _check_value(key, value)
        if tok in (_GT, _LT):
            (value,) = values
            if _int64(value) is None:
                raise ScopeError(f"for '{tok}', the value must be an integer, not {value!r}")
            return Requirement(key, tok, frozenset(values))
        op = "notin" if tok in (_NE, _NOTIN) else "in"
        return Requirement(key, op, frozenset(values))

    def exact(self) -> set[str]:
        tok, lit = self.peek()
        if tok in (_END, _COMMA):
            return {""}  # `key=` selects an empty value
        tok, lit = self.take()
        if tok != _IDENT:
            raise ScopeError(f"found '{lit}', expected: identifier")
        return {lit}

    def values(self) -> set[str]:
        tok, lit = self.take()
        if tok != _OPEN:
            raise ScopeError(f"found '{lit or tok}', expected: '('")
        tok, lit = self.peek()
        if tok == _CLOSE:
            self.take()
            return {""}  # `in ()` is `in ("")`, as the API server reads it
        if tok not in (_IDENT, _COMMA):
            raise ScopeError(f"found '{lit or tok}', expected: ',', ')' or identifier")
        out: set[str] = set()
        while True:
            tok, lit = self.take()
            if tok == _IDENT:
                out.add(lit)
                tok, lit = self.peek()
                if tok == _CLOSE:
                    self.take()
                    return out
                if tok != _COMMA:
                    raise ScopeError(f"found '{lit or tok}', expected: ',' or ')'")
            elif tok == _COMMA:
                # An empty item (`(,a)`, `(a,)`, `(a,,b)`) is the empty value.
                nxt, _ = self.peek()
                if not out or nxt in (_CLOSE, _COMMA):
                    out.add("")
                if nxt == _CLOSE:
                    self.take()
                    return out
            else:
                raise ScopeError(f"found '{lit or tok}', expected: ',', or identifier")


def _check_key(key: str) -> str:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(prefix)):
        raise ScopeError(
            f"invalid label key {key!r}: the prefix must be a DNS subdomain (lower case)"
        )
    if "/" in prefix or len(name) > 63 or not _LABEL_NAME.fullmatch(name):
        raise ScopeError(
            f"invalid label key {key!r}: letters, digits, '-', '_' and '.', starting and "
            "ending with a letter or digit, at most 63 characters, after an optional prefix/"
        )
    return key


def _check_value(key: str, value: str) -> None:
    if value and (len(value) > 63 or not _LABEL_NAME.fullmatch(value)):
        raise ScopeError(
            f"invalid value {value!r} for label {key!r}: letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit, at most 63 characters"
        )


def parse_selector(text: str) -> LabelSelector:
    """Parse a Kubernetes label selector; raises `ScopeError` (one line) when malformed."""
    return LabelSelector(text.strip(), tuple(_Parser(text).parse()))


@dataclass(frozen=True, slots=True)
class Scope:
    """The part of every source kdns serves. The default, `Scope()`, serves everything."""

    #: The namespaces served; None: all of them.
    namespaces: frozenset[str] | None = None
    #: The Services served (of those namespaces); None: all of them.
    selector: LabelSelector | None = None

    @classmethod
    def of(cls, namespaces: Iterable[str] = (), selector: str | None = None) -> Scope:
        """The scope of `--namespace` (repeated) and `--label-selector`; raises `ScopeError`
        for a malformed selector or a name that cannot be a namespace."""
        names = set()
        for ns in namespaces:
            if len(ns) > 63 or not _DNS1123_LABEL.fullmatch(ns):
                raise ScopeError(
                    f"bad --namespace {ns!r}: a namespace name is lower-case letters, digits "
                    "and '-', starting and ending with a letter or digit, at most 63 characters"
                )
            names.add(ns)
        parsed = None
        if selector is not None and selector.strip():
            try:
                parsed = parse_selector(selector)
            except ScopeError as err:
                raise ScopeError(f"bad --label-selector {selector!r}: {err}") from None
        return cls(frozenset(names) or None, parsed)

    @property
    def everything(self) -> bool:
        """True when nothing is left out."""
        return self.namespaces is None and self.selector is None

    def serves(self, namespace: str) -> bool:
        """True when names in `namespace` may be answered."""
        return self.namespaces is None or namespace in self.namespaces

    def admits(self, obj: KubeObject, labels: Mapping[str, str] | None = None) -> bool:
        """Whether `obj` (a Service with `labels`) is served: the one rule of the scope."""
        if isinstance(obj, Namespace):
            return self.serves(obj.name)
        if not self.serves(obj.namespace):
            return False
        if isinstance(obj, Service) and self.selector is not None:
            return self.selector.matches(labels or {})
        return True

    def describe(self) -> str:
        """One line for the log: what is served."""
        parts = []
        if self.namespaces is not None:
            parts.append("namespaces " + ", ".join(sorted(self.namespaces)))
        else:
            parts.append("all namespaces")
        if self.selector is not None:
            parts.append(f"services matching {self.selector.text}")
        return "; ".join(parts)
