"""Ray's string form of a filter predicate, such as ``"score > 1.0 and key != 3"``, as a pyarrow Expression.

The string is parsed with ``ast`` and translated node by node, so only column names, constants,
comparisons, arithmetic, ``and``/``or``/``not`` and ``in`` (a list of constants) are accepted:
nothing in it is ever evaluated as Python.
"""

import ast
import operator

import pyarrow.compute as pc

_COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _tree(text: str):
    try:
        return ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        raise ValueError(f"filter: cannot parse expr {text!r}: {error.msg}") from None


def parse(text: str) -> pc.Expression:
    """The predicate ``text`` as a pyarrow Expression; ValueError for anything that is not a predicate
    this module can translate."""
    return _node(_tree(text).body, text)


def names(text: str) -> set:
    """The column names the predicate ``text`` reads."""
    return {node.id for node in ast.walk(_tree(text)) if isinstance(node, ast.Name)}


def _node(node, text: str):
    if isinstance(node, ast.BoolOp):
        values = [_node(v, text) for v in node.values]
        combine = operator.and_ if isinstance(node.op, ast.And) else operator.or_
        result = values[0]
        for value in values[1:]:
            result = combine(result, value)
        return result
    if isinstance(node, ast.UnaryOp):
        operand = _node(node.operand, text)
        if isinstance(node.op, ast.Not):
            return ~operand
        if isinstance(node.op, ast.USub):
            return pc.negate(operand) if isinstance(operand, pc.Expression) else -operand
    if isinstance(node, ast.Compare):
        # Chained comparisons (0 < x < 1) mean each pair, all of them true, as in Python.
        left, result = _node(node.left, text), None
        for op, comparator in zip(node.ops, node.comparators):
            if isinstance(op, (ast.In, ast.NotIn)):
                if not isinstance(comparator, (ast.List, ast.Tuple, ast.Set)):
                    raise ValueError(f"filter: 'in' needs a list of constants in {text!r}.")
                part = left.isin([_constant(e, text) for e in comparator.elts])
                part = ~part if isinstance(op, ast.NotIn) else part
                right = None
            elif type(op) in _COMPARE:
                right = _node(comparator, text)
                part = _COMPARE[type(op)](_as_expression(left), right)
            else:
                break
            result = part if result is None else result & part
            left = right if right is not None else left
        else:
            return result
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
        return _ARITH[type(node.op)](_as_expression(_node(node.left, text)), _node(node.right, text))
    if isinstance(node, ast.Name):
        return pc.field(node.id)
    if isinstance(node, ast.Constant):
        return _constant(node, text)
    raise ValueError(f"filter: unsupported syntax {ast.unparse(node)!r} in expr {text!r}.")


def _constant(node, text: str):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        return -node.operand.value
    raise ValueError(f"filter: expected a constant, got {ast.unparse(node)!r} in expr {text!r}.")


def _as_expression(value):
    return value if isinstance(value, pc.Expression) else pc.scalar(value)
