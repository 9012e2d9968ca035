"""Arithmetic and algebra read from model text without ever handing the text to Python.

Several reasoning-gym scorers check an expression answer (``countdown``, ``puzzle24``, the
polynomial and integration tasks) with ``sympy.parse_expr``, which is ``eval`` underneath:
``open('x','w').write('1')`` is a valid answer to it. assay scores those tasks with this parser
instead. It accepts only the grammar those answers use:

    expr  := term (('+' | '-') term)*
    term  := unary (('*' | '/') unary)*
    unary := ('+' | '-') unary | power
    power := atom ('**' unary)?
    atom  := NUMBER | NAME | NAME '(' expr (',' expr)* ')' | '(' expr ')'

with Python's precedence (``-2**2`` is -4, ``2**3**2`` is 512) and builds the value itself: exact
fractions for arithmetic, or sympy objects assembled by constructor calls for algebra, so the
result equals what ``parse_expr`` would have built for every answer in the grammar. Names must
be on the caller's allow-list (variables, then functions); anything else is an ``ExprError``.
"""

from __future__ import annotations

import operator
import re
from fractions import Fraction
from typing import Any, Callable, Optional

MAX_CHARS = 2000
MAX_DEPTH = 100

_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)|([A-Za-z][A-Za-z0-9_]*)|(\*\*|[-+*/(),]))")


_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "**": operator.pow}


class ExprError(ValueError):
    """The text is not an expression of the accepted grammar (or its value is out of bounds)."""


def tokenize(text: str) -> list[tuple[str, str]]:
    """(kind, text) pairs, kind in num / name / op; ExprError on any other character."""
    if len(text) > MAX_CHARS:
        raise ExprError(f"longer than {MAX_CHARS} characters")
    out, pos, end = [], 0, len(text.rstrip())
    while pos < end:
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ExprError(f"unexpected character {text[pos:].lstrip()[:1]!r}")
        num, name, op = m.groups()
        out.append(("num", num) if num else ("name", name) if name else ("op", op))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], build: "Builder"):
        self.toks, self.i, self.b, self.depth = tokens, 0, build, 0

    def peek(self) -> Optional[tuple[str, str]]:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, op: str) -> bool:
        if self.peek() == ("op", op):
            self.i += 1
            return True
        return False

    def parse(self) -> Any:
        if not self.toks:
            raise ExprError("empty expression")
        value = self.expr()
        if self.peek() is not None:
            raise ExprError(f"unexpected {self.peek()[1]!r}")
        return value

    def expr(self) -> Any:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExprError(f"nested deeper than {MAX_DEPTH}")
        value = self.term()
        while True:
            if self.take("+"):
                value = self.b.binop("+", value, self.term())
            elif self.take("-"):
                value = self.b.binop("-", value, self.term())
            else:
                self.depth -= 1
                return value

    def term(self) -> Any:
        value = self.unary()
        while True:
            if self.take("*"):
                value = self.b.binop("*", value, self.unary())
            elif self.take("/"):
                value = self.b.binop("/", value, self.unary())
            else:
                return value

    def unary(self) -> Any:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExprError(f"nested deeper than {MAX_DEPTH}")
        if self.take("-"):
            value = self.b.neg(self.unary())
        elif self.take("+"):
            value = self.unary()
        else:
            value = self.power()
        self.depth -= 1
        return value

    def power(self) -> Any:
        base = self.atom()
        if self.take("**"):
            return self.b.binop("**", base, self.unary())
        return base

    def atom(self) -> Any:
        tok = self.peek()
        if tok is None:
            raise ExprError("expression ends early")
        self.i += 1
        kind, text = tok
        if kind == "num":
            return self.b.num(text)
        if kind == "name":
            if self.take("("):
                args = [self.expr()]
                while self.take(","):
                    args.append(self.expr())
                if not self.take(")"):
                    raise ExprError(f"unclosed call of {text!r}")
                return self.b.call(text, args)
            return self.b.name(text)
        if text == "(":
            value = self.expr()
            if not self.take(")"):
                raise ExprError("unclosed '('")
            return value
        raise ExprError(f"unexpected {text!r}")


class Builder:
    """How parsed pieces become a value; subclasses decide numbers, names and operators."""

    def num(self, text: str) -> Any:
        raise ExprError(f"number {text!r} not accepted here")

    def name(self, text: str) -> Any:
        raise ExprError(f"unknown name {text!r}")

    def call(self, fname: str, args: list) -> Any:
        raise ExprError(f"unknown function {fname!r}")

    def neg(self, a: Any) -> Any:
        return -a

    def binop(self, op: str, a: Any, b: Any) -> Any:
        """Python's operators on the values built so far (numbers or sympy objects alike)."""
        return _OPERATORS[op](a, b)


class FractionBuilder(Builder):
    """Exact rational arithmetic, no names: what countdown and 24-game answers are."""

    MAX_BITS = 4096

    def num(self, text: str) -> Fraction:
        return Fraction(text)

    def binop(self, op: str, a: Fraction, b: Fraction) -> Fraction:
        if op == "/" and b == 0:
            raise ExprError("division by zero")
        if op != "**":
            return super().binop(op, a, b)
        if b.denominator != 1:
            raise ExprError("a fractional power is not rational")
        bits = max(a.numerator.bit_length(), a.denominator.bit_length()) * abs(b.numerator)
        if bits > self.MAX_BITS:
            raise ExprError("power too large")
        if a == 0 and b < 0:
            raise ExprError("division by zero")
        return a ** int(b)


class SympyBuilder(Builder):
    """sympy objects built by constructor calls, as ``parse_expr`` would build them.

    ``symbols`` maps names to the objects they stand for; other identifiers become plain
    ``Symbol``s when ``auto_symbols`` (parse_expr's behaviour), and ``functions`` are callables.
    """

    FUNCTIONS = ("sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan", "sinh", "cosh", "tanh",
                 "exp", "log", "sqrt", "Abs", "Integral")
    CONSTANTS = ("pi", "E")

    def __init__(self, symbols: Optional[dict[str, Any]] = None, auto_symbols: bool = True,
                 functions: tuple[str, ...] = FUNCTIONS):
        import sympy

        self.sp = sympy
        self.symbols = dict(symbols or {})
        self.auto_symbols = auto_symbols
        self.functions: dict[str, Callable] = {f: getattr(sympy, f) for f in functions}

    def num(self, text: str) -> Any:
        if re.fullmatch(r"\d+", text):
            return self.sp.Integer(text)
        return self.sp.Float(text)

    def name(self, text: str) -> Any:
        if text in self.symbols:
            return self.symbols[text]
        if text in self.CONSTANTS:
            return getattr(self.sp, text)
        if text in self.functions:
            raise ExprError(f"function {text!r} used without arguments")
        if self.auto_symbols:
            return self.sp.Symbol(text)
        raise ExprError(f"unknown name {text!r}")

    def call(self, fname: str, args: list) -> Any:
        if fname not in self.functions:
            raise ExprError(f"unknown function {fname!r}")
        try:
            return self.functions[fname](*args)
        except (TypeError, ValueError) as exc:
            raise ExprError(f"{fname}: {exc}") from None


def parse(text: str, builder: Builder) -> Any:
    """The value of ``text`` under ``builder``; ExprError if it is not in the grammar."""
    return _Parser(tokenize(text), builder).parse()


def rational(text: str) -> Fraction:
    """The exact value of an arithmetic expression over numbers (no names)."""
    return parse(text, FractionBuilder())
