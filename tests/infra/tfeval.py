"""A Terraform configuration evaluated offline: every resource instance, with its arguments.

``terraform plan`` cannot run here (no providers), so this reads the .tf files with
python-hcl2's parser and evaluates what a plan would see of them: variables (defaults
and the values given), locals, ``for_each`` on resources, data sources, modules and
dynamic blocks, conditionals, ``for`` expressions and the functions the configuration
uses. What only the provider knows (a resource's attributes) stays a reference, an
:class:`Unknown` that reads as the reference does (``google_service_account.function
["ingress"].email``); anything this cannot evaluate becomes an :class:`Unknown` too, so a
checker that needs a value fails closed on it.

>>> cfg = loads({"main.tf": 'locals {\\n  a = { for k in ["x", "y"] : k => upper(k) }\\n}\\n'})
>>> cfg.locals["a"]
{'x': 'X', 'y': 'Y'}
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import hcl2
from lark import Token, Tree

Value: TypeAlias = Any  # None | bool | int | float | str | list | dict | Unknown
Node: TypeAlias = "Tree[Token]"


@dataclass(frozen=True)
class Unknown:
    """A value known only after apply (a reference), or that this cannot evaluate.

    ``text`` reads like the expression: a reference (``ref``) is written bare, anything
    else as the text it came from, with its references in ``${...}``.
    """

    text: str
    ref: bool = False

    def __str__(self) -> str:
        return self.text

    def attr(self, name: str) -> Unknown:
        return Unknown(f"{self.text}.{name}", self.ref) if self.ref else self

    def index(self, key: Value) -> Unknown:
        if not self.ref:
            return self
        shown = json.dumps(key) if isinstance(key, str) else str(key)
        return Unknown(f"{self.text}[{shown}]", True)


class EvalError(Exception):
    """The expression is not valid here (Terraform would reject it too)."""


@dataclass
class Block:
    type: str
    labels: list[str]
    attrs: dict[str, Node]
    blocks: list[Block]
    file: str
    source: str  # the file's text, for the source of an expression

    def text_of(self, name: str) -> str:
        node = self.attrs[name]
        return " ".join(self.source[node.meta.start_pos : node.meta.end_pos].split())


@dataclass
class Instance:
    """One resource or data source instance (``key`` None without ``for_each``)."""

    kind: str  # "resource" or "data"
    type: str
    name: str
    key: str | None
    module: str  # "" at the root, else 'module.function["ingress"].'
    file: str
    body: dict[str, Value]  # arguments evaluated; nested blocks as lists of dicts
    for_each: Value = None

    @property
    def resource(self) -> str:
        """The address of the resource (all its instances)."""
        prefix = "data." if self.kind == "data" else ""
        return f"{self.module}{prefix}{self.type}.{self.name}"

    @property
    def address(self) -> str:
        return self.resource + ("" if self.key is None else f"[{json.dumps(self.key)}]")


@dataclass
class Config:
    instances: list[Instance] = field(default_factory=list)
    locals: dict[str, Value] = field(default_factory=dict)
    outputs: dict[str, Value] = field(default_factory=dict)
    variables: dict[str, dict[str, Value]] = field(default_factory=dict)  # name -> arguments
    values: dict[str, Value] = field(default_factory=dict)  # the input variables' values
    declared_in: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # file -> ...
    moved: list[tuple[str, str]] = field(default_factory=list)
    unexpanded: list[str] = field(default_factory=list)  # for_each this could not evaluate

    def resources(self, type_: str | None = None) -> list[Instance]:
        return [i for i in self.instances if i.kind == "resource" and type_ in (None, i.type)]

    def by_address(self, address: str) -> Instance | None:
        return next((i for i in self.instances if i.address == address), None)


# ------------------------------------------------------------------------- parsing


def _trees(node: Node) -> list[Node]:
    return [c for c in node.children if isinstance(c, Tree) and c.data != "new_line_or_comment"]


def _name(node: Node) -> str:
    """The text of an identifier, keyword or literal string label."""
    if node.data == "string":
        return "".join(str(t.children[0]) for t in _trees(node))
    return str(node.children[0])


def parse_body(body: Node, file: str, source: str) -> list[Block]:
    out = []
    for node in _trees(body):
        if node.data == "block":
            parts = _trees(node)
            out.append(_block(parts, file, source))
    return out


def _block(parts: list[Node], file: str, source: str) -> Block:
    inner = parts[-1]
    labels = [_name(p) for p in parts[:-1]]
    attrs: dict[str, Node] = {}
    blocks = []
    for node in _trees(inner):
        if node.data == "attribute":
            key, expr = _trees(node)
            attrs[_name(key)] = expr
        elif node.data == "block":
            blocks.append(_block(_trees(node), file, source))
    return Block(labels[0], labels[1:], attrs, blocks, file, source)


def parse_dir(tf_dir: Path) -> list[Block]:
    return parse_files({p.name: p.read_text() for p in sorted(tf_dir.glob("*.tf"))})


def parse_files(files: Mapping[str, str]) -> list[Block]:
    blocks = []
    for name, src in files.items():
        blocks += parse_body(_trees(hcl2.parses_to_tree(src))[0], name, src + "\n")
    return blocks


# ---------------------------------------------------------------------- evaluation


def _text(v: Value) -> str:
    """A value as it would read inside a string template."""
    if isinstance(v, Unknown):
        return f"${{{v.text}}}" if v.ref else v.text
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return ""
    if isinstance(v, (int, float, str)):
        return str(v)
    raise EvalError(f"cannot put {type(v).__name__} in a string")


def _all_known(*vs: Value) -> bool:
    return not any(isinstance(v, Unknown) for v in vs)


def _toset(v: Value) -> Value:
    if not isinstance(v, list):
        raise EvalError("toset needs a list")
    if not _all_known(*v):
        return Unknown("toset(...)")
    return sorted(set(v), key=str)


def _merge(*maps: Value) -> Value:
    out: dict[str, Value] = {}
    for m in maps:
        if isinstance(m, Unknown):
            return Unknown("merge(...)")
        if m is not None:
            out.update(m)
    return out


def _flatten(v: Value) -> Value:
    out: list[Value] = []
    for x in v:
        out += _flatten(x) if isinstance(x, list) else [x]
    return out


def _strfn(fn: Callable[..., Value]) -> Callable[..., Value]:
    def call(*args: Value) -> Value:
        if not _all_known(*args):
            return Unknown(f"{fn.__name__}(...)")
        return fn(*args)

    return call


def _coalesce(*args: Value) -> Value:
    for a in args:
        if isinstance(a, Unknown):
            return Unknown("coalesce(...)")
        if a not in (None, ""):
            return a
    raise EvalError("coalesce: no non-null argument")


def _tostring(v: Value) -> Value:
    return _text(v) if not isinstance(v, Unknown) else v


FUNCTIONS: dict[str, Callable[..., Value]] = {
    "alltrue": _strfn(lambda xs: all(xs)),
    "anytrue": _strfn(lambda xs: any(xs)),
    "base64encode": _strfn(lambda s: base64.b64encode(s.encode()).decode()),
    "coalesce": _coalesce,
    "concat": lambda *ls: [x for lst in ls for x in lst],
    "contains": _strfn(lambda xs, x: x in xs),
    "distinct": lambda xs: list(dict.fromkeys(xs)),
    "flatten": _flatten,
    "join": _strfn(lambda sep, xs: sep.join(xs)),
    "keys": lambda m: sorted(m),
    "length": lambda v: len(v),
    "lookup": lambda m, k, *d: m.get(k, *d) if d else m[k],
    "lower": _strfn(str.lower),
    "merge": _merge,
    "replace": _strfn(lambda s, a, b: s.replace(a, b)),
    "setproduct": lambda *ls: [list(t) for t in itertools.product(*ls)],
    "split": _strfn(lambda sep, s: s.split(sep)),
    "toset": _toset,
    "tostring": _tostring,
    "upper": _strfn(str.upper),
    "values": lambda m: [m[k] for k in sorted(m)],
}


class Scope:
    """One module instance: its blocks, variables, and the names bound around an
    expression (``each``, ``for`` variables, dynamic block iterators)."""

    def __init__(
        self,
        ev: Evaluator,
        blocks: list[Block],
        variables: Mapping[str, Value],
        prefix: str,
        path: Path,
    ) -> None:
        self.ev = ev
        self.blocks = blocks
        self.prefix = prefix
        self.path = path
        self.vars = dict(variables)
        self.local_exprs: dict[str, Block] = {}
        self.resources: dict[str, Block] = {}
        self.modules: dict[str, Block] = {}
        for b in blocks:
            if b.type == "locals":
                for name in b.attrs:
                    self.local_exprs[name] = b
            elif b.type in ("resource", "data"):
                kind = "data." if b.type == "data" else ""
                self.resources[f"{kind}{b.labels[0]}.{b.labels[1]}"] = b
            elif b.type == "module":
                self.modules[b.labels[0]] = b
        self.local_values: dict[str, Value] = {}
        self.evaluating: set[str] = set()
        self.for_each_cache: dict[str, Value] = {}
        self.module_cache: dict[tuple[str, str | None], dict[str, Value]] = {}

    # -- names

    def local(self, name: str) -> Value:
        if name not in self.local_values:
            if name not in self.local_exprs:
                raise EvalError(f"no local.{name}")
            if name in self.evaluating:
                raise EvalError(f"local.{name} refers to itself")
            self.evaluating.add(name)
            try:
                block = self.local_exprs[name]
                self.local_values[name] = self.eval_safe(block.attrs[name], {}, block)
            finally:
                self.evaluating.discard(name)
        return self.local_values[name]

    def for_each_of(self, address: str) -> Value:
        """The evaluated for_each of a resource, data source or module (None: none)."""
        if address not in self.for_each_cache:
            block = self.modules[address[7:]] if address.startswith("module.") else None
            block = block or self.resources[address]
            expr = block.attrs.get("for_each")
            self.for_each_cache[address] = None if expr is None else self.eval_safe(expr, {}, block)
        return self.for_each_cache[address]

    def instance_keys(self, address: str) -> list[str] | None:
        each = self.for_each_of(address)
        if each is None:
            return None
        if isinstance(each, dict):
            return list(each)
        if isinstance(each, list) and _all_known(*each):
            return [str(x) for x in each]
        return []

    def resource_value(self, address: str) -> Value:
        keys = self.instance_keys(address)
        ref = Unknown(self.prefix + address, True)
        if keys is None:
            return ref
        return {k: ref.index(k) for k in keys}

    def module_value(self, name: str) -> Value:
        keys = self.instance_keys(f"module.{name}")
        if keys is None:
            return self.module_outputs(name, None)
        return {k: self.module_outputs(name, k) for k in keys}

    def module_outputs(self, name: str, key: str | None) -> dict[str, Value]:
        if (name, key) not in self.module_cache:
            child = self.ev.module_scope(self, name, key)
            self.module_cache[(name, key)] = {
                b.labels[0]: child.eval_safe(b.attrs["value"], {}, b)
                for b in child.blocks
                if b.type == "output"
            }
        return self.module_cache[(name, key)]

    def lookup(self, name: str, env: Mapping[str, Value]) -> Value:
        if name in env:
            return env[name]
        if name in ("var", "local", "module", "data", "path", "each", "count", "terraform"):
            return _Root(name)
        if any(a.split(".", 1)[0] == name for a in self.resources):
            return _Root(name)
        raise EvalError(f"unknown name {name}")

    # -- expressions

    def eval_safe(self, node: Node, env: Mapping[str, Value], block: Block) -> Value:
        try:
            return self.eval(node, env)
        except (EvalError, KeyError, IndexError, TypeError, AttributeError, ValueError):
            text = block.source[node.meta.start_pos : node.meta.end_pos]
            return Unknown(" ".join(text.split()))

    def eval(self, node: Node, env: Mapping[str, Value]) -> Value:
        rule = node.data
        kids = _trees(node)
        if rule == "expr_term":
            return self.eval(kids[0], env)
        if rule == "identifier":
            return self.lookup(str(node.children[0]), env)
        if rule == "literal_value":
            return {"true": True, "false": False, "null": None}[str(node.children[0])]
        if rule == "int_lit":
            return int(str(node.children[0]))
        if rule == "float_lit":
            return float(str(node.children[0]))
        if rule == "string":
            return self.template(kids, env)
        if rule == "tuple":
            return [self.eval(k, env) for k in kids]
        if rule == "object":
            out: dict[str, Value] = {}
            for elem in kids:
                key_node, value = _trees(elem)
                out[self.object_key(key_node, env)] = self.eval(value, env)
            return out
        if rule == "function_call":
            name = str(kids[0].children[0])
            args = [self.eval(a, env) for a in _trees(kids[1])] if len(kids) > 1 else []
            if name not in FUNCTIONS:
                raise EvalError(f"function {name} is not evaluated offline")
            return FUNCTIONS[name](*args)
        if rule == "get_attr_expr_term":
            return self.get_attr(self.eval(kids[0], env), _name(_trees(kids[1])[0]))
        if rule == "index_expr_term":
            target = self.eval(kids[0], env)
            index = kids[1]
            if index.data == "short_index":
                key: Value = int(str(index.children[-1]))
            else:
                key = self.eval(_trees(index)[0], env)
            return self.get_index(target, key)
        if rule == "conditional":
            cond = self.eval(kids[0], env)
            if isinstance(cond, Unknown):
                return Unknown(f"({cond.text} ? ... : ...)")
            return self.eval(kids[1] if cond else kids[2], env)
        if rule == "binary_op":
            left = self.eval(kids[0], env)
            op_node, right_node = _trees(kids[1])
            return self.binary(str(op_node.children[0]), left, right_node, env)
        if rule == "unary_op":
            op = str(node.children[0])
            v = self.eval(kids[0], env)
            if isinstance(v, Unknown):
                return v
            return (not v) if op == "!" else -v
        if rule in ("for_tuple_expr", "for_object_expr"):
            return self.for_expr(node, env)
        raise EvalError(f"{rule} is not evaluated offline")

    def object_key(self, key_node: Node, env: Mapping[str, Value]) -> str:
        inner = _trees(key_node)
        if not inner:  # a keyword used as a key
            return str(key_node.children[0].children[0])  # type: ignore[union-attr]
        expr = inner[0]
        bare = _trees(expr)
        if expr.data == "expr_term" and bare and bare[0].data == "identifier":
            return str(bare[0].children[0])
        if expr.data == "identifier":
            return str(expr.children[0])
        key = self.eval(expr, env)
        if not isinstance(key, str):
            raise EvalError("object keys must be known strings")
        return key

    def template(self, parts: list[Node], env: Mapping[str, Value]) -> Value:
        pieces: list[Value] = []
        for part in parts:
            inner = _trees(part)
            if inner and inner[0].data == "interpolation":
                pieces.append(self.eval(_trees(inner[0])[0], env))
            elif inner:
                raise EvalError("template directives are not evaluated offline")
            else:
                raw = str(part.children[0])
                pieces.append(json.loads(f'"{raw}"') if "\\" in raw else raw)
        if len(pieces) == 1 and isinstance(pieces[0], Unknown) and parts[0].children:
            only = _trees(parts[0])
            if only and only[0].data == "interpolation":
                return pieces[0]  # "${x}" is x
        text = "".join(_text(p) for p in pieces)
        return Unknown(text) if any(isinstance(p, Unknown) for p in pieces) else text

    def get_attr(self, target: Value, name: str) -> Value:
        if isinstance(target, _Root):
            return target.attr(self, name)
        if isinstance(target, Unknown):
            return target.attr(name)
        if isinstance(target, dict):
            if name not in target:
                raise EvalError(f"no attribute {name}")
            return target[name]
        raise EvalError(f"cannot read .{name} of {type(target).__name__}")

    def get_index(self, target: Value, key: Value) -> Value:
        if isinstance(target, _Root):
            return target.index(key)
        if isinstance(target, Unknown):
            return target.index(key) if not isinstance(key, Unknown) else Unknown(target.text)
        if isinstance(key, Unknown):
            return Unknown(f"{_text(key)}")
        if isinstance(target, dict):
            return target[key]
        if isinstance(target, list):
            return target[int(key)]
        raise EvalError(f"cannot index {type(target).__name__}")

    def binary(self, op: str, left: Value, right_node: Node, env: Mapping[str, Value]) -> Value:
        if op == "&&" and left is False:
            return False
        if op == "||" and left is True:
            return True
        right = self.eval(right_node, env)
        if not _all_known(left, right):
            return Unknown(f"({_text(left)} {op} {_text(right)})")
        ops: dict[str, Callable[[Value, Value], Value]] = {
            "==": lambda a, b: a == b,
            "!=": lambda a, b: a != b,
            "&&": lambda a, b: bool(a and b),
            "||": lambda a, b: bool(a or b),
            "<": lambda a, b: a < b,
            ">": lambda a, b: a > b,
            "<=": lambda a, b: a <= b,
            ">=": lambda a, b: a >= b,
            "+": lambda a, b: a + b,
            "-": lambda a, b: a - b,
            "*": lambda a, b: a * b,
            "/": lambda a, b: a / b,
            "%": lambda a, b: a % b,
        }
        return ops[op](left, right)

    def for_expr(self, node: Node, env: Mapping[str, Value]) -> Value:
        kids = _trees(node)
        intro, rest = kids[0], kids[1:]
        names = [str(t.children[0]) for t in _trees(intro) if t.data == "identifier"]
        source = self.eval(_trees(intro)[-1], env)
        cond = rest[-1] if rest and rest[-1].data == "for_cond" else None
        body = rest[:-1] if cond is not None else rest
        if isinstance(source, Unknown):
            return Unknown(f"[for ... in {source.text}]")
        items = list(source.items()) if isinstance(source, dict) else list(enumerate(source))
        is_object = node.data == "for_object_expr"
        out_list: list[Value] = []
        out_dict: dict[str, Value] = {}
        for k, v in items:
            scope = dict(env)
            if len(names) == 2:
                scope[names[0]], scope[names[1]] = k, v
            else:
                scope[names[0]] = v
            if cond is not None:
                keep = self.eval(_trees(cond)[0], scope)
                if isinstance(keep, Unknown):
                    return Unknown("[for ... if unknown]")
                if not keep:
                    continue
            if is_object:
                key = self.eval(body[0], scope)
                if not isinstance(key, str):
                    raise EvalError("for expression keys must be known strings")
                if key in out_dict:
                    raise EvalError(f"duplicate key {key}")
                out_dict[key] = self.eval(body[1], scope)
            else:
                out_list.append(self.eval(body[0], scope))
        return out_dict if is_object else out_list


@dataclass
class _Root:
    """var, local, module, data, path, each or a resource type, before its attribute."""

    name: str
    parts: tuple[str, ...] = ()

    def attr(self, scope: Scope, attr: str) -> Value:
        n = self.name
        if n == "var":
            return scope.vars[attr] if attr in scope.vars else Unknown(f"var.{attr}", True)
        if n == "local":
            return scope.local(attr)
        if n == "path":
            return str(scope.path) if attr == "module" else Unknown(f"path.{attr}", True)
        if n == "module":
            if attr not in scope.modules:
                raise EvalError(f"no module {attr}")
            return scope.module_value(attr)
        if n == "data" and not self.parts:
            return _Root("data", (attr,))
        address = f"data.{self.parts[0]}.{attr}" if n == "data" else f"{n}.{attr}"
        if address not in scope.resources:
            raise EvalError(f"no {address}")
        return scope.resource_value(address)

    def index(self, key: Value) -> Value:
        raise EvalError(f"{self.name}[...] is not a reference")


class Evaluator:
    """Expands a root module (and the local modules it calls) into a Config."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cfg = Config()

    def module_scope(self, parent: Scope, name: str, key: str | None) -> Scope:
        call = parent.modules[name]
        source = parent.eval(call.attrs["source"], {})
        path = (parent.path / str(source)).resolve()
        blocks = parse_dir(path)
        env = self.each_env(parent, f"module.{name}", key)
        args = {
            a: parent.eval_safe(expr, env, call)
            for a, expr in call.attrs.items()
            if a not in ("source", "for_each", "depends_on", "providers", "count", "version")
        }
        variables = self.defaults(blocks)
        variables.update(args)
        shown = "" if key is None else f"[{json.dumps(key)}]"
        return Scope(self, blocks, variables, f"{parent.prefix}module.{name}{shown}.", path)

    def defaults(self, blocks: list[Block]) -> dict[str, Value]:
        """Each variable's default (a constant: defaults cannot refer to anything)."""
        empty = Scope(self, [], {}, "", self.root)
        return {
            b.labels[0]: empty.eval_safe(b.attrs["default"], {}, b)
            for b in blocks
            if b.type == "variable" and "default" in b.attrs
        }

    def each_env(self, scope: Scope, address: str, key: str | None) -> dict[str, Value]:
        if key is None:
            return {}
        each = scope.for_each_of(address)
        value = each[key] if isinstance(each, dict) else key
        return {"each": {"key": key, "value": value}}

    def expand(self, scope: Scope) -> None:
        for b in scope.blocks:
            if b.type in ("resource", "data"):
                self.expand_resource(scope, b)
            elif b.type == "moved" and not scope.prefix:
                self.cfg.moved.append((b.text_of("from"), b.text_of("to")))
        for name in scope.modules:
            keys = scope.instance_keys(f"module.{name}")
            if keys == [] and not isinstance(scope.for_each_of(f"module.{name}"), (dict, list)):
                self.cfg.unexpanded.append(f"{scope.prefix}module.{name}")
            for key in [None] if keys is None else keys:
                self.expand(self.module_scope(scope, name, key))

    def expand_resource(self, scope: Scope, b: Block) -> None:
        kind = b.type
        address = f"{'data.' if kind == 'data' else ''}{b.labels[0]}.{b.labels[1]}"
        keys = scope.instance_keys(address)
        each = scope.for_each_of(address)
        if keys == [] and not isinstance(each, (dict, list)):
            self.cfg.unexpanded.append(scope.prefix + address)
        for key in [None] if keys is None else keys:
            env = self.each_env(scope, address, key)
            body = self.body(scope, b, env)
            self.cfg.instances.append(
                Instance(kind, b.labels[0], b.labels[1], key, scope.prefix, b.file, body, each)
            )

    def body(self, scope: Scope, b: Block, env: Mapping[str, Value]) -> dict[str, Value]:
        out: dict[str, Value] = {}
        for name, expr in b.attrs.items():
            if name == "for_each":
                continue
            if name == "depends_on":
                out[name] = b.text_of(name)
                continue
            out[name] = scope.eval_safe(expr, env, b)
        for nested in b.blocks:
            if nested.type == "dynamic":
                self.dynamic(scope, nested, env, out)
            else:
                out.setdefault(nested.type, []).append(self.body(scope, nested, env))
        return out

    def dynamic(
        self, scope: Scope, b: Block, env: Mapping[str, Value], out: dict[str, Value]
    ) -> None:
        name = b.labels[0]
        iterator = name
        if "iterator" in b.attrs:
            iterator = b.text_of("iterator")
        source = scope.eval_safe(b.attrs["for_each"], env, b)
        content = next(c for c in b.blocks if c.type == "content")
        if isinstance(source, Unknown):
            out.setdefault(name, []).append({"__unknown__": source})
            return
        items = list(source.items()) if isinstance(source, dict) else list(enumerate(source))
        for k, v in items:
            inner = dict(env)
            inner[iterator] = {"key": k, "value": v}
            out.setdefault(name, []).append(self.body(scope, content, inner))


def _finish(ev: Evaluator, blocks: list[Block], root: Scope) -> Config:
    cfg = ev.cfg
    cfg.values = dict(root.vars)
    ev.expand(root)
    for name in root.local_exprs:
        cfg.locals[name] = root.local(name)
    for b in blocks:
        if b.type == "variable":
            cfg.variables[b.labels[0]] = {
                **{a: b.text_of(a) for a in b.attrs if a == "type"},
                **{a: root.eval_safe(b.attrs[a], {}, b) for a in b.attrs if a != "type"},
                "validation": [blk for blk in b.blocks if blk.type == "validation"],
            }
        if b.type in ("variable", "output"):
            cfg.declared_in.setdefault(b.file, []).append((b.type, b.labels[0]))
        if b.type == "output":
            cfg.outputs[b.labels[0]] = root.eval_safe(b.attrs["value"], {}, b)
    return cfg


def load(tf_dir: Path, variables: Mapping[str, Value] | None = None) -> Config:
    """Evaluate the configuration in ``tf_dir`` with these input variables."""
    blocks = parse_dir(tf_dir)
    ev = Evaluator(tf_dir)
    values = ev.defaults(blocks)
    values.update(variables or {})
    return _finish(ev, blocks, Scope(ev, blocks, values, "", tf_dir))


def loads(files: Mapping[str, str], variables: Mapping[str, Value] | None = None) -> Config:
    """Evaluate a configuration given as {file name: text}."""
    blocks = parse_files(files)
    ev = Evaluator(Path("."))
    values = ev.defaults(blocks)
    values.update(variables or {})
    return _finish(ev, blocks, Scope(ev, blocks, values, "", Path(".")))


def render(value: Value) -> str:
    """Any value as text, references included (for matching references in it)."""
    if isinstance(value, dict):
        return " ".join(f"{k} = {render(v)}" for k, v in value.items())
    if isinstance(value, list):
        return " ".join(render(v) for v in value)
    if isinstance(value, Unknown):
        return value.text
    return str(value)


def strings(value: Value) -> Iterator[str]:
    """Every string in a value, keys and references included."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
    elif isinstance(value, (str, Unknown)):
        yield str(value)
