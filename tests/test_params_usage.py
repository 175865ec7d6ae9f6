"""Params are the only config, read one way: an AST check over src/ and stages/ (config.py, the
schema's home, excluded) that

1. every field of the Params schema, recursively, is read as an attribute somewhere (a setting
   nothing reads is a setting that does nothing), and
2. no code reads params through a dict: no `.get()`, subscript or `getattr` on a params object
   or section, nor on a `model_dump()` of one. Subscripting a mapping-valued field
   (`params.models[name]`, `params.references.get(name)`) is fine: its keys are the user's names,
   not schema keys.

Receivers are typed by a small inference: the name `params`, arguments annotated with a schema
class (or with an alias such as ModelSpec), names assigned from those, attribute chains through
the schema's field types, and the return annotations of config's methods (Profile.resolved()
-> ResolvedProfile) and of the module's own functions. A read on a receiver of unknown type
counts for rule 1 by name (the code may be untyped), never a read on a different known class.
"""
from __future__ import annotations

import ast
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import BaseModel

from llmbench import config

ROOT = Path(__file__).resolve().parents[1]
SKIP = {ROOT / "src" / "llmbench" / "config.py"}
SKIP_DIRS = {ROOT / "src" / "llmbench" / "vendor"}  # third-party code, vendored as is
# Schemas whose values reach code only through another (code reads Profile.resolved(), whose
# grid a large model's GridOverrides shrink): their fields count as read through the target's.
READ_THROUGH = {"Profile": "ResolvedProfile", "GridOverrides": "ResolvedProfile"}


# ------------------------------------------------------------------ the schema
@dataclass(frozen=True)
class Model:  # a params object or section; several classes for a union (ModelSpec)
    classes: tuple[type[BaseModel], ...]


@dataclass(frozen=True)
class Mapping:  # a dict-valued field: keys are user data
    value: object


@dataclass(frozen=True)
class Dumped:  # model_dump() / dict() of a params object: a dict of schema keys
    pass


@dataclass(frozen=True)
class Tuple:
    items: tuple


def kind_of(tp) -> object | None:
    """The kind of a python type (a field's annotation or a return hint)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return kind_of(args[0])
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return Model((tp,))
    if origin in (typing.Union, types.UnionType):
        kinds = [kind_of(a) for a in args if a is not type(None)]
        models = tuple(c for k in kinds if isinstance(k, Model) for c in k.classes)
        if models:
            return Model(models)
        return kinds[0] if len(kinds) == 1 else None
    if origin is dict:
        return Mapping(kind_of(args[1]))
    if origin is tuple and args and args[-1] is not Ellipsis:
        return Tuple(tuple(kind_of(a) for a in args))
    return None


def schema_classes(root: type[BaseModel] = config.Params) -> dict[str, type[BaseModel]]:
    """Every model class reachable from root through field types (plus ResolvedProfile)."""
    seen: dict[str, type[BaseModel]] = {}

    def walk(k):
        if isinstance(k, Model):
            for cls in k.classes:
                if cls.__name__ not in seen:
                    seen[cls.__name__] = cls
                    for f in cls.model_fields.values():
                        walk(kind_of(f.annotation))
        elif isinstance(k, Mapping):
            walk(k.value)
        elif isinstance(k, Tuple):
            for i in k.items:
                walk(i)

    walk(Model((root,)))
    walk(Model((config.ResolvedProfile,)))
    return seen


CLASSES = schema_classes()


def _self_reads() -> dict[tuple[str, str], set[str]]:
    """(class, method or property) -> the fields it reads from self, from config.py's source:
    calling paths.profile_json(m) reads paths.profile."""
    out: dict[tuple[str, str], set[str]] = {}
    for cls in ast.parse(Path(config.__file__).read_text()).body:
        if isinstance(cls, ast.ClassDef) and cls.name in CLASSES:
            for fn in cls.body:
                if isinstance(fn, ast.FunctionDef):
                    out[(cls.name, fn.name)] = {
                        n.attr for n in ast.walk(fn) if isinstance(n, ast.Attribute)
                        and isinstance(n.value, ast.Name) and n.value.id == "self"
                        and n.attr in CLASSES[cls.name].model_fields}
    return out


SELF_READS = _self_reads()


def _member_kind(cls: type[BaseModel], attr: str):
    if attr in cls.model_fields:
        return kind_of(cls.model_fields[attr].annotation)
    member = getattr(cls, attr, None)
    if attr in ("model_dump", "dict"):
        return "dump"
    if isinstance(member, property):
        member = member.fget
    if callable(member):
        try:
            ret = typing.get_type_hints(member, vars(config)).get("return")
        except Exception:  # noqa: BLE001 - an unresolvable hint is just unknown
            return None
        if ret is not None and isinstance(getattr(cls, attr), property):
            return kind_of(ret)
        return ("method", kind_of(ret)) if ret is not None else None
    return None


# ------------------------------------------------------------------ the checker
class Checker(ast.NodeVisitor):
    """Collects attribute reads (class name or None for an untyped receiver, attr) and
    violations of rule 2, for one module."""

    def __init__(self, path: str, tree: ast.Module):
        self.path = path
        self.reads: set[tuple[str | None, str]] = set()
        self.violations: list[str] = []
        self.env: list[dict[str, object]] = [{"params": Model((config.Params,))}]
        self.functions = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}

    # --- types
    def annotation(self, node: ast.expr | None):
        if node is None:
            return None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                node = ast.parse(node.value, mode="eval").body
            except SyntaxError:
                return None
        if isinstance(node, ast.Attribute):  # config.Params
            node = ast.Name(node.attr)
        if isinstance(node, ast.Name):
            obj = getattr(config, node.id, None)
            if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__name__ in CLASSES:
                return Model((obj,))
            if obj is not None and typing.get_origin(obj) is typing.Annotated:  # ModelSpec
                return kind_of(obj)
            return None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):  # X | None
            return self.annotation(node.left) or self.annotation(node.right)
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
            if node.value.id in ("tuple", "Tuple") and isinstance(node.slice, ast.Tuple):
                return Tuple(tuple(self.annotation(e) for e in node.slice.elts))
            if node.value.id == "Optional":
                return self.annotation(node.slice)
        return None

    def kind(self, node: ast.expr):
        if isinstance(node, ast.Name):
            for scope in reversed(self.env):
                if node.id in scope:
                    return scope[node.id]
            return None
        if isinstance(node, ast.Attribute):
            base = self.kind(node.value)
            if isinstance(base, Model):
                kinds = [k for k in (_member_kind(c, node.attr) for c in base.classes) if k is not None]
                return kinds[0] if kinds else None
            return None
        if isinstance(node, ast.Subscript):
            base = self.kind(node.value)
            return base.value if isinstance(base, Mapping) else None
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id == "dict" and node.args \
                    and isinstance(self.kind(node.args[0]), Model):
                return Dumped()
            if isinstance(f, ast.Name) and f.id in self.functions:
                return self.annotation(self.functions[f.id].returns)
            fn = getattr(config, f.id, None) if isinstance(f, ast.Name) else None
            if isinstance(fn, types.FunctionType) and fn.__module__ == config.__name__:
                ret = typing.get_type_hints(fn).get("return")  # load_params() -> Params
                return kind_of(ret) if ret is not None else None
            member = self.kind(f)
            if member == "dump":
                return Dumped()
            if isinstance(member, tuple) and member[0] == "method":
                return member[1]
            if isinstance(f, ast.Attribute) and f.attr in ("model_copy", "model_validate"):
                return self.kind(f.value) if f.attr == "model_copy" else None
            if isinstance(f, ast.Name) and f.id in CLASSES:  # Gate(...) builds a section
                return Model((CLASSES[f.id],))
            if isinstance(f, ast.Attribute) and f.attr == "model_validate" and \
                    isinstance(f.value, ast.Name) and f.value.id in CLASSES:
                return Model((CLASSES[f.value.id],))
        if isinstance(node, ast.Tuple):
            return Tuple(tuple(self.kind(e) for e in node.elts))
        return None

    def bind(self, target: ast.expr, kind) -> None:
        if isinstance(target, ast.Name):
            self.env[-1][target.id] = kind
        elif isinstance(target, ast.Tuple):
            items = kind.items if isinstance(kind, Tuple) and len(kind.items) == len(target.elts) \
                else (None,) * len(target.elts)
            for t, k in zip(target.elts, items):
                self.bind(t, k)

    def flag(self, node: ast.AST, what: str) -> None:
        self.violations.append(f"{self.path}:{node.lineno}: {what}: {ast.unparse(node)}")

    # --- scopes and bindings
    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        scope: dict[str, object] = {}
        for a in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]:
            k = self.annotation(a.annotation)
            if k is not None or a.annotation is not None:
                scope[a.arg] = k  # annotated with another type: not params, whatever its name
            elif a.arg == "params":
                scope[a.arg] = Model((config.Params,))
            else:
                scope[a.arg] = None  # shadows an outer name
        self.env.append(scope)
        for d in node.decorator_list:
            self.visit(d)
        for stmt in node.body:
            self.visit(stmt)
        self.env.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for t in node.targets:
            self.bind(t, self.kind(node.value))

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
        self.bind(node.target, self.annotation(node.annotation) or
                  (self.kind(node.value) if node.value is not None else None))

    def visit_For(self, node: ast.For) -> None:
        self.visit(node.iter)
        it = node.iter
        if isinstance(it, ast.Call) and isinstance(it.func, ast.Attribute):
            base = self.kind(it.func.value)
            if isinstance(base, Mapping) and it.func.attr == "items":
                self.bind(node.target, Tuple((None, base.value)))
            elif isinstance(base, Mapping) and it.func.attr == "values":
                self.bind(node.target, base.value)
        for stmt in [*node.body, *node.orelse]:
            self.visit(stmt)

    # --- reads and violations
    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.ctx, ast.Load):
            base = self.kind(node.value)
            if isinstance(base, Model):
                for cls in base.classes:
                    self.reads.add((cls.__name__, node.attr))
                    for field in SELF_READS.get((cls.__name__, node.attr), ()):
                        self.reads.add((cls.__name__, field))
                if not any(hasattr(c, node.attr) or node.attr in c.model_fields for c in base.classes):
                    self.flag(node, f"'{node.attr}' is not a key of {base.classes[0].__name__}")
            elif base is None:
                self.reads.add((None, node.attr))
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if isinstance(self.kind(node.value), Model | Dumped):
            self.flag(node, "params read by subscript")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr == "get" and isinstance(self.kind(f.value), Model | Dumped):
            self.flag(node, "params read with .get()")
            for child in [f.value, *node.args, *node.keywords]:  # not `.get` itself: flagged once
                self.visit(child)
            return
        if isinstance(f, ast.Name) and f.id == "getattr" and node.args and \
                isinstance(self.kind(node.args[0]), Model):
            self.flag(node, "params read with getattr()")
        self.generic_visit(node)


def check_source(source: str, path: str = "<snippet>") -> Checker:
    tree = ast.parse(source)
    checker = Checker(path, tree)
    checker.visit(tree)
    return checker


def unread_fields(reads: set[tuple[str | None, str]]) -> list[str]:
    """'Class.field' for every schema field no read covers."""
    by_name = {attr for cls, attr in reads if cls is None}
    missing = []
    for name, cls in sorted(CLASSES.items()):
        if name == "ResolvedProfile":
            continue  # not a params.yaml key itself; Profile's fields are checked through it
        for field in cls.model_fields:
            owners = {name, READ_THROUGH.get(name, name)}
            if not ({(o, field) for o in owners} & reads or field in by_name):
                missing.append(f"{name}.{field}")
    return missing


def scan() -> tuple[set, list[str]]:
    reads, violations = set(), []
    files = sorted({*(ROOT / "src").rglob("*.py"), *(ROOT / "stages").rglob("*.py")})
    for path in files:
        if path in SKIP or any(d in path.parents for d in SKIP_DIRS):
            continue
        c = check_source(path.read_text(), str(path.relative_to(ROOT)))
        reads |= c.reads
        violations += c.violations
    return reads, violations


# ------------------------------------------------------------------ the checks on the repo
def test_every_params_field_is_read_somewhere():
    reads, _ = scan()
    assert unread_fields(reads) == []


def test_no_code_reads_params_through_a_dict():
    _, violations = scan()
    assert violations == []


# ------------------------------------------------------------------ the check can fail
BAD = '''
from llmbench.config import Dataset, Params, ResolvedProfile

def main(params: Params, name: str) -> None:
    spec = params.models[name]                # a mapping field: fine
    ref = params.references.get(name)         # fine too
    threshold = params.gate.get("threshold")  # 1
    cfg = params.report
    lat = cfg["latency"]                      # 2
    raw = params.dataset.model_dump()
    url = raw.get("url")                      # 3
    t = getattr(params.dataset, "timeout_s")  # 4
    r = params.profile.resolved()
    n = r.batch_sizes[0]                      # a tuple value: fine
    old = r["warmup"]                         # 5
    typo = params.gate.treshold               # 6

def helper(ds: Dataset, prof: "ResolvedProfile | None"):
    return dict(ds)["url"], prof.get("device")  # 7, 8
'''


def test_the_checker_flags_dict_style_reads_and_typos():
    c = check_source(BAD)
    lines = [v.split(": ", 2)[1:] for v in c.violations]
    assert [w for w, _ in lines] == [
        "params read with .get()", "params read by subscript", "params read with .get()",
        "params read with getattr()", "params read by subscript",
        "'treshold' is not a key of Gate", "params read by subscript", "params read with .get()"]
    assert "cfg['latency']" in c.violations[1] and "dict(ds)['url']" in c.violations[6]


def test_the_checker_finds_unread_fields():
    c = check_source('''
def f(params):
    return params.gate.threshold, params.profile.resolved().warmup, params.dataset.url, \\
        params.paths.profile_json("m")

def g(params: "ServeParams"):
    return params.max_tokens  # another type named params: not checked
''')
    assert c.violations == []
    missing = unread_fields(c.reads)
    assert "Paths.profile" not in missing and "Paths.infer" in missing  # via the helper
    assert "Gate.threshold" not in missing and "Gate.confidence" in missing
    assert "Profile.warmup" not in missing and "Profile.batch_sizes" in missing  # via resolved()
    assert "Dataset.url" not in missing and "Dataset.timeout_s" in missing
    # a read on a different, known section does not count
    c = check_source("def f(params):\n    return params.report.threshold\n")
    assert "Gate.threshold" in unread_fields(c.reads)
    assert c.violations and "'threshold' is not a key of Report" in c.violations[0]


@pytest.mark.parametrize("snippet", [
    "def f(params):\n    return params.models[name].source\n",
    "def f(params):\n    for name, spec in params.models.items():\n        spec.chat\n",
    "def f(p: 'Params'):\n    r, big = p.profile.resolved().for_model(3)\n    return r.threshold\n",
])
def test_the_checker_follows_mappings_loops_and_returns(snippet):
    c = check_source(snippet)
    if "threshold" in snippet:  # r is a ResolvedProfile: a typo on it is caught
        assert c.violations and "not a key of ResolvedProfile" in c.violations[0]
    else:
        assert c.violations == [] and any(cls in ("GgufPackageModel", "RandomModel") for cls, _ in c.reads)
