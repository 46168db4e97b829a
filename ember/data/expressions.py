"""Ray Data's expressions: ``col("x") * 2 + lit(1)``, ``(col("a") > 0) & col("b").is_in([1, 2])``.

An ``Expr`` is a small tree built with Python operators; ``to_pyarrow()`` turns it into a
``pyarrow.compute.Expression`` so that ``Dataset.with_column`` and ``Dataset.filter(expr=...)``
evaluate whole blocks in Arrow, never row by row, and a filter can be pushed into a Parquet scan.

Arithmetic follows Python (and numpy) rather than Arrow's integer kernels: ``/`` is true division,
``//`` rounds towards minus infinity and ``%`` takes the sign of the divisor, each giving float64.

``Dataset.filter`` also takes Ray's string form (``"score > 1.0 and key != 3"``), parsed by
``ember.data._expr_parse`` with ``ast``: nothing in the string is evaluated as Python.
"""

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["AliasExpr", "BinaryExpr", "ColumnExpr", "Expr", "LiteralExpr", "UnaryExpr", "col", "lit"]


def _divide(left, right):
    # Arrow's divide truncates integers (7 / 2 == 3); a float dividend makes it true division.
    return pc.divide(left.cast(pa.float64()), right)


def _floordiv(left, right):
    return pc.floor(_divide(left, right))


def _mod(left, right):
    return pc.subtract(left.cast(pa.float64()), pc.multiply(_floordiv(left, right), right))


_BINARY = {
    "add": (pc.add, "+"),
    "sub": (pc.subtract, "-"),
    "mul": (pc.multiply, "*"),
    "div": (_divide, "/"),
    "floordiv": (_floordiv, "//"),
    "mod": (_mod, "%"),
    "pow": (pc.power, "**"),
    "gt": (pc.greater, ">"),
    "lt": (pc.less, "<"),
    "ge": (pc.greater_equal, ">="),
    "le": (pc.less_equal, "<="),
    "eq": (pc.equal, "=="),
    "ne": (pc.not_equal, "!="),
    # Kleene logic, as SQL and Ray: null & False is False, null | True is True.
    "and": (pc.and_kleene, "&"),
    "or": (pc.or_kleene, "|"),
}
_UNARY = {"not": pc.invert, "is_null": pc.is_null, "is_not_null": pc.is_valid}
# Elementwise functions: method name -> the pyarrow.compute function.
_FUNCTIONS = {
    "abs": pc.abs_checked,
    "negate": pc.negate_checked,
    "sign": pc.sign,
    "ceil": pc.ceil,
    "floor": pc.floor,
    "round": pc.round,
    "trunc": pc.trunc,
    "exp": pc.exp,
    "ln": pc.ln,
    "log10": pc.log10,
    "log2": pc.log2,
    "sqrt": pc.sqrt,
    "sin": pc.sin,
    "cos": pc.cos,
    "tan": pc.tan,
    "asin": pc.asin,
    "acos": pc.acos,
    "atan": pc.atan,
}
# Functions that return float64 whatever the input, as in Ray.
_FLOAT_RESULT = frozenset({"exp", "ln", "log10", "log2", "sqrt", "sin", "cos", "tan", "asin", "acos", "atan"})


def _as_expr(value) -> "Expr":
    return value if isinstance(value, Expr) else LiteralExpr(value)


class Expr:
    """An expression over a block's columns, evaluated by Arrow on whole blocks.

    Build one with ``col`` and ``lit`` and the operators ``+ - * / // % **``, comparisons, ``&``,
    ``|``, ``~`` (not Python's ``and``/``or``/``not``, which cannot be overloaded) and unary ``-``.
    """

    __slots__ = ()

    @property
    def name(self) -> str | None:
        """The output column name: a column's own name or an alias, else None."""
        return None

    def to_pyarrow(self) -> pc.Expression:
        """This expression as a ``pyarrow.compute.Expression``."""
        raise NotImplementedError

    def columns(self) -> set:
        """The names of the columns this expression reads."""
        raise NotImplementedError

    def structurally_equals(self, other) -> bool:
        """Whether ``other`` is the same tree (``==`` builds an equality expression instead)."""
        return type(other) is type(self) and self._key() == other._key()

    def _key(self):
        raise NotImplementedError

    # By identity: ``==`` builds an expression, so a structural hash would make sets and dicts call
    # it and then fail on its truth value. ``structurally_equals`` compares trees.
    __hash__ = object.__hash__

    def __bool__(self):
        raise TypeError(
            "An Expr has no truth value: combine conditions with & | ~ (not and/or/not), "
            "and write a < x < b as (col('x') > a) & (col('x') < b)."
        )

    def _bin(self, op: str, other, reverse: bool = False) -> "BinaryExpr":
        other = _as_expr(other)
        return BinaryExpr(op, other, self) if reverse else BinaryExpr(op, self, other)

    def __add__(self, other):
        return self._bin("add", other)

    def __radd__(self, other):
        return self._bin("add", other, True)

    def __sub__(self, other):
        return self._bin("sub", other)

    def __rsub__(self, other):
        return self._bin("sub", other, True)

    def __mul__(self, other):
        return self._bin("mul", other)

    def __rmul__(self, other):
        return self._bin("mul", other, True)

    def __truediv__(self, other):
        return self._bin("div", other)

    def __rtruediv__(self, other):
        return self._bin("div", other, True)

    def __floordiv__(self, other):
        return self._bin("floordiv", other)

    def __rfloordiv__(self, other):
        return self._bin("floordiv", other, True)

    def __mod__(self, other):
        return self._bin("mod", other)

    def __rmod__(self, other):
        return self._bin("mod", other, True)

    def __pow__(self, other):
        return self._bin("pow", other)

    def __rpow__(self, other):
        return self._bin("pow", other, True)

    def __gt__(self, other):
        return self._bin("gt", other)

    def __lt__(self, other):
        return self._bin("lt", other)

    def __ge__(self, other):
        return self._bin("ge", other)

    def __le__(self, other):
        return self._bin("le", other)

    def __eq__(self, other):
        return self._bin("eq", other)

    def __ne__(self, other):
        return self._bin("ne", other)

    def __and__(self, other):
        return self._bin("and", other)

    def __rand__(self, other):
        return self._bin("and", other, True)

    def __or__(self, other):
        return self._bin("or", other)

    def __ror__(self, other):
        return self._bin("or", other, True)

    def __invert__(self):
        return UnaryExpr("not", self)

    def __neg__(self):
        return FunctionExpr("negate", self)

    def is_null(self) -> "Expr":
        """True where the value is null."""
        return UnaryExpr("is_null", self)

    def is_not_null(self) -> "Expr":
        """True where the value is not null."""
        return UnaryExpr("is_not_null", self)

    def is_in(self, values) -> "Expr":
        """True where the value is one of ``values`` (a list, tuple or set of constants)."""
        return InExpr(self, values, negated=False)

    def not_in(self, values) -> "Expr":
        """True where the value is none of ``values``; a null value is not in any list."""
        return InExpr(self, values, negated=True)

    def alias(self, name: str) -> "Expr":
        """The same values under the output column name ``name``."""
        return AliasExpr(self, name)

    def power(self, exponent) -> "Expr":
        """This expression raised to ``exponent``."""
        return self._bin("pow", exponent)

    def cast(self, target_type, *, safe: bool = True) -> "Expr":
        """The values converted to ``target_type``: a pyarrow DataType, a type name such as
        ``"float32"``, or an object with ``to_arrow_dtype()`` (Ray's DataType). With ``safe``, an
        overflow or a lossy conversion fails instead of changing values."""
        if hasattr(target_type, "to_arrow_dtype"):
            target_type = target_type.to_arrow_dtype()
        if isinstance(target_type, str):
            try:
                target_type = pa.type_for_alias(target_type)
            except ValueError:
                raise ValueError(f"cast: unknown type name {target_type!r}.") from None
        if not isinstance(target_type, pa.DataType):
            raise TypeError(f"cast: target_type must be a pyarrow DataType or a type name, got {target_type!r}.")
        return FunctionExpr("cast", self, (target_type, bool(safe)))


def _function_method(fn_name: str):
    def method(self) -> Expr:
        return FunctionExpr(fn_name, self)

    method.__name__ = fn_name
    method.__doc__ = f"Elementwise ``{_FUNCTIONS[fn_name].__name__}`` of the values (pyarrow.compute)."
    return method


for _fn in _FUNCTIONS:
    setattr(Expr, _fn, _function_method(_fn))


class ColumnExpr(Expr):
    """The column ``name`` of the block."""

    __slots__ = ("_name",)

    def __init__(self, name: str):
        if not isinstance(name, str) or not name:
            raise TypeError(f"col: the column name must be a non-empty str, got {name!r}.")
        self._name = name

    @property
    def name(self):
        return self._name

    def to_pyarrow(self):
        return pc.field(self._name)

    def columns(self):
        return {self._name}

    def _key(self):
        return self._name

    def __repr__(self):
        return f"col({self._name!r})"


class LiteralExpr(Expr):
    """A constant, broadcast to every row."""

    __slots__ = ("value",)

    def __init__(self, value):
        if isinstance(value, Expr):
            raise TypeError("lit: the value is already an Expr.")
        try:
            pa.scalar(value)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as error:
            raise TypeError(f"lit: {value!r} is not a constant Arrow can hold: {error}") from None
        self.value = value

    def to_pyarrow(self):
        return pc.scalar(self.value)

    def columns(self):
        return set()

    def _key(self):
        return (type(self.value).__name__, self.value)

    def __repr__(self):
        return f"lit({self.value!r})"


class BinaryExpr(Expr):
    """``left <op> right`` for an arithmetic, comparison or boolean operator."""

    __slots__ = ("op", "left", "right")

    def __init__(self, op: str, left: Expr, right: Expr):
        if op not in _BINARY:
            raise ValueError(f"unknown binary operator {op!r}.")
        self.op, self.left, self.right = op, left, right

    def to_pyarrow(self):
        return _BINARY[self.op][0](self.left.to_pyarrow(), self.right.to_pyarrow())

    def columns(self):
        return self.left.columns() | self.right.columns()

    def _key(self):
        return (self.op, type(self.left), self.left._key(), type(self.right), self.right._key())

    def __repr__(self):
        return f"({self.left!r} {_BINARY[self.op][1]} {self.right!r})"


class UnaryExpr(Expr):
    """``~operand``, ``operand.is_null()`` or ``operand.is_not_null()``."""

    __slots__ = ("op", "operand")

    def __init__(self, op: str, operand: Expr):
        if op not in _UNARY:
            raise ValueError(f"unknown unary operator {op!r}.")
        self.op, self.operand = op, operand

    def to_pyarrow(self):
        return _UNARY[self.op](self.operand.to_pyarrow())

    def columns(self):
        return self.operand.columns()

    def _key(self):
        return (self.op, type(self.operand), self.operand._key())

    def __repr__(self):
        return f"~{self.operand!r}" if self.op == "not" else f"{self.operand!r}.{self.op}()"


class InExpr(Expr):
    """``operand.is_in(values)`` or ``operand.not_in(values)``."""

    __slots__ = ("operand", "values", "negated")

    def __init__(self, operand: Expr, values, negated: bool):
        if isinstance(values, LiteralExpr):
            values = values.value
        if isinstance(values, Expr) or not isinstance(values, (list, tuple, set, frozenset)):
            raise TypeError(f"is_in/not_in: values must be a list of constants, got {type(values).__name__}.")
        try:
            pa.array(list(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as error:
            raise TypeError(f"is_in/not_in: {values!r} is not a list of constants of one type: {error}") from None
        self.operand, self.values, self.negated = operand, list(values), negated

    def to_pyarrow(self):
        found = self.operand.to_pyarrow().isin(self.values)
        return ~found if self.negated else found

    def columns(self):
        return self.operand.columns()

    def _key(self):
        return (type(self.operand), self.operand._key(), tuple(self.values), self.negated)

    def __repr__(self):
        return f"{self.operand!r}.{'not_in' if self.negated else 'is_in'}({self.values!r})"


class FunctionExpr(Expr):
    """An elementwise function of one expression: ``col("x").abs()``, ``.cast(...)``..."""

    __slots__ = ("fn", "operand", "args")

    def __init__(self, fn: str, operand: Expr, args: tuple = ()):
        self.fn, self.operand, self.args = fn, operand, tuple(args)

    def to_pyarrow(self):
        operand = self.operand.to_pyarrow()
        if self.fn == "cast":
            target, safe = self.args
            return operand.cast(target, safe=safe)
        if self.fn in _FLOAT_RESULT:
            # An integer column would otherwise get an integer result where Arrow has no kernel.
            operand = operand.cast(pa.float64())
        return _FUNCTIONS[self.fn](operand)

    def columns(self):
        return self.operand.columns()

    def _key(self):
        return (self.fn, type(self.operand), self.operand._key(), tuple(str(a) for a in self.args))

    def __repr__(self):
        args = ", ".join(repr(str(a)) if isinstance(a, pa.DataType) else repr(a) for a in self.args[:1])
        return f"{self.operand!r}.{self.fn}({args})"


class AliasExpr(Expr):
    """``expr`` under another output name."""

    __slots__ = ("expr", "_name")

    def __init__(self, expr: Expr, name: str):
        if not isinstance(name, str) or not name:
            raise TypeError(f"alias: the name must be a non-empty str, got {name!r}.")
        self.expr, self._name = expr, name

    @property
    def name(self):
        return self._name

    def to_pyarrow(self):
        return self.expr.to_pyarrow()

    def columns(self):
        return self.expr.columns()

    def _key(self):
        return (self._name, type(self.expr), self.expr._key())

    def __repr__(self):
        return f"{self.expr!r}.alias({self._name!r})"


def col(name: str) -> ColumnExpr:
    """A reference to the column ``name``."""
    return ColumnExpr(name)


def lit(value) -> LiteralExpr:
    """A constant ``value`` (a number, string, bool or None) used in an expression."""
    return LiteralExpr(value)


def to_expression(expr, what: str = "filter") -> pc.Expression:
    """``expr`` (an ``Expr``, Ray's string form or a pyarrow Expression) as a pyarrow Expression;
    an error at the call for anything else or for a string this module cannot translate."""
    if isinstance(expr, Expr):
        return expr.to_pyarrow()
    if isinstance(expr, pc.Expression):
        return expr
    if isinstance(expr, str):
        from ember.data._expr_parse import parse

        return parse(expr)
    raise TypeError(
        f"{what}: expr must be an ember.data.expressions.Expr (col(...), lit(...)), a str or a "
        f"pyarrow.compute.Expression, got {type(expr).__name__}."
    )


def referenced_columns(expr) -> set | None:
    """The columns ``expr`` reads, when it is an ``Expr`` or a string; None for a pyarrow Expression."""
    if isinstance(expr, Expr):
        return expr.columns()
    if isinstance(expr, str):
        from ember.data._expr_parse import names

        return names(expr)
    return None
