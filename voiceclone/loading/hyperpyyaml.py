"""A safe HyperPyYAML reader: CosyVoice's model recipes as plain data, nothing imported or executed.

Tags become data (`!new:` / `!name:` / `!apply:` calls become `YamlCall`), `!ref` expressions are resolved, and
hostile files are refused: over MAX_YAML_BYTES, nested deeper than MAX_DEPTH, expanding (through aliases or !ref) to
more than MAX_EXPANSION values, or arithmetic beyond MAX_NUMBER.
"""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass, field
from typing import Any

import yaml


@dataclass
class YamlCall:
    """A `!new:` / `!name:` / `!apply:` node kept as data: which callable, with which arguments."""

    kind: str
    target: str
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)


@dataclass
class _Ref:
    """An unresolved `!ref` / `!copy` expression such as `<chunk_size> * <token_mel_ratio>`."""

    expr: str


class _SafeHyperLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader that turns HyperPyYAML tags into `YamlCall` / `_Ref` data."""


def _construct_call(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node, kind: str) -> YamlCall:
    if isinstance(node, yaml.MappingNode):
        return YamlCall(kind, tag_suffix, kwargs=loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return YamlCall(kind, tag_suffix, args=loader.construct_sequence(node, deep=True))
    value = loader.construct_scalar(node)
    return YamlCall(kind, tag_suffix, args=[] if value in ("", None) else [yaml.safe_load(value)])


for _kind in ("new", "name", "apply", "applyref"):
    _SafeHyperLoader.add_multi_constructor(
        f"!{_kind}:", lambda loader, suffix, node, kind=_kind: _construct_call(loader, suffix, node, kind)
    )
for _tag in ("!ref", "!copy"):
    _SafeHyperLoader.add_constructor(_tag, lambda loader, node: _Ref(loader.construct_scalar(node)))
_SafeHyperLoader.add_constructor("!tuple", lambda loader, node: tuple(loader.construct_sequence(node, deep=True)))
_SafeHyperLoader.add_constructor("!PLACEHOLDER", lambda loader, node: None)
# Any other local tag (`!include:file.yaml`, `!module:pkg`, ...) is kept as data too, with its name as the kind.
_SafeHyperLoader.add_multi_constructor(
    "!", lambda loader, suffix, node: _construct_call(loader, suffix.partition(":")[2], node, suffix.partition(":")[0])
)
# YAML 1.1 reads `1e-06` as a string; HyperPyYAML (like YAML 1.2) reads it as a float.
_SafeHyperLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789.")
)

_REF = re.compile(r"<([^<>]+)>")
_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
MAX_YAML_BYTES = 1 << 20  # a real model yaml is ~10 KB
MAX_NUMBER = 2**63  # every arithmetic operand and result stays within this magnitude
MAX_EXPONENT = 64
MAX_DEPTH = 64  # nesting of lists, mappings and calls
MAX_EXPANSION = 200_000  # values and string characters produced while resolving (aliases and !ref included)


class _Budget:
    """Bounds the work of resolving one yaml file, so aliases or !ref chains cannot expand exponentially."""

    def __init__(self) -> None:
        self.used = 0

    def spend(self, amount: int, depth: int) -> None:
        self.used += amount
        if self.used > MAX_EXPANSION:
            raise ValueError(f"expands to more than {MAX_EXPANSION} values (alias or !ref bomb?)")
        if depth > MAX_DEPTH:
            raise ValueError(f"nested more than {MAX_DEPTH} levels deep")


def _bounded(value: int | float) -> int | float:
    if isinstance(value, complex) or not abs(value) <= MAX_NUMBER:  # also refuses nan
        raise ValueError(f"arithmetic result {str(value)[:40]} is out of range")
    return value


def _arithmetic(node: ast.AST) -> int | float:
    """Evaluate a parsed expression made only of numbers and + - * / // % **, every value bounded by MAX_NUMBER."""
    if isinstance(node, ast.Expression):
        return _arithmetic(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return _bounded(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _arithmetic(node.left), _arithmetic(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ValueError(f"exponent {right} is larger than {MAX_EXPONENT}")
        try:
            return _bounded(_BINOPS[type(node.op)](left, right))
        except (ZeroDivisionError, OverflowError) as exc:
            raise ValueError(str(exc)) from None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _arithmetic(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    raise ValueError("not arithmetic")


def _lookup(top: dict, key: str, resolving: set[str], budget: _Budget, depth: int) -> Any:
    """The value of a top-level key (dotted paths reach into mappings and call arguments)."""
    head, *rest = key.split(".")
    if head not in top:
        raise ValueError(f"!ref <{key}> names no top-level key")
    if head in resolving:
        raise ValueError(f"circular !ref <{key}>")
    value = _resolve(top[head], top, resolving | {head}, budget, depth + 1)
    for part in rest:
        values = value.kwargs if isinstance(value, YamlCall) else value
        if not isinstance(values, dict) or part not in values:
            raise ValueError(f"!ref <{key}>: `{part}` is not a key of a mapping there")
        value = values[part]
    return value


def _resolve_ref(expr: str, top: dict, resolving: set[str], budget: _Budget, depth: int) -> Any:
    names = _REF.findall(expr)
    if len(names) == 1 and expr.strip() == f"<{names[0]}>":
        return _lookup(top, names[0], resolving, budget, depth)
    values = {name: _lookup(top, name, resolving, budget, depth) for name in names}
    text = _REF.sub(lambda m: repr(values[m.group(1)]), expr)
    budget.spend(len(text), depth)
    try:
        return _arithmetic(ast.parse(text, mode="eval"))
    except (SyntaxError, RecursionError, MemoryError):
        pass
    except ValueError as exc:
        if str(exc) != "not arithmetic":
            raise ValueError(f"!ref {expr!r}: {exc}") from None
    return _REF.sub(lambda m: str(values[m.group(1)]), expr)


def _resolve(value: Any, top: dict, resolving: set[str], budget: _Budget, depth: int = 0) -> Any:
    budget.spend(len(value) if isinstance(value, str) else 1, depth)
    if isinstance(value, _Ref):
        return _resolve_ref(value.expr, top, resolving, budget, depth)
    if isinstance(value, YamlCall):
        return YamlCall(
            value.kind,
            value.target,
            [_resolve(v, top, resolving, budget, depth + 1) for v in value.args],
            {k: _resolve(v, top, resolving, budget, depth + 1) for k, v in value.kwargs.items()},
        )
    if isinstance(value, dict):
        return {k: _resolve(v, top, resolving, budget, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_resolve(v, top, resolving, budget, depth + 1) for v in value)
    return value


def read_hyperpyyaml(text: str, overrides: dict | None = None) -> dict:
    """Parse HyperPyYAML text into plain data: calls become `YamlCall`, `!ref` values are resolved.

    Hostile files are refused with ValueError: over MAX_YAML_BYTES, nested deeper than MAX_DEPTH, expanding (through
    aliases or !ref) to more than MAX_EXPANSION values, or arithmetic beyond MAX_NUMBER."""
    if len(text) > MAX_YAML_BYTES:
        raise ValueError(f"larger than {MAX_YAML_BYTES} bytes")
    try:
        top = yaml.load(text, Loader=_SafeHyperLoader) or {}
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(top, dict):
        raise ValueError("the top level is not a mapping")
    top.update(overrides or {})
    budget = _Budget()
    return {key: _resolve(value, top, {key}, budget) for key, value in top.items()}
