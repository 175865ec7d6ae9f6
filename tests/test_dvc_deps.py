"""Exact cache keys: every llmbench module a stage imports (transitively, also inside functions)
is a dvc.yaml dep of that stage (the file or a folder above it), stages/__init__.py (it sets the
OpenMP policy and the offline flags) is a dep of every stage, and every measuring stage depends
on the env stage's output (package versions), which is always_changed and cached."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
MEASURING = ("prepare", "quantize", *(f"{s}-{b}" for s in ("infer", "profile", "evaluate")
                                      for b in ("transformers", "llamacpp")))


def _module_file(name: str) -> Path | None:
    base = (SRC if name.split(".")[0] == "llmbench" else ROOT) / Path(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _imports(path: Path) -> set[str]:
    """Dotted llmbench/stages module names imported anywhere in the file."""
    tree = ast.parse(path.read_text(), str(path))
    pkg = path.relative_to(SRC if SRC in path.parents else ROOT).with_suffix("").parts
    pkg = pkg[:-1] if path.name != "__init__.py" else pkg[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join((*pkg[:len(pkg) - node.level + 1], *([base] if base else [])))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}  # `from llmbench import failures`
    return {n for n in out if n.split(".")[0] in ("llmbench", "stages")}


def closure(entry: Path) -> set[Path]:
    seen, todo = set(), [entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # a package's __init__ runs too
                f = _module_file(".".join(parts[:i]))
                if f is not None and f not in seen:
                    todo.append(f)
    return seen


def _stages() -> dict[str, dict]:
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    return {name: st.get("do", st) for name, st in doc["stages"].items()}


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT)
    return any(rel == Path(d) or Path(d) in rel.parents for d in deps)


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_imports_are_deps(stage):
    st = _stages()[stage]
    module = st["cmd"].split("python -m ", 1)[1].split()[0]
    entry = _module_file(module)
    assert entry is not None, f"{stage}: cannot find {module}"
    deps = [str(d) for d in st.get("deps", [])]
    # the package's __init__ runs first (and imports the pre-flight check)
    files = closure(entry) | closure(ROOT / "stages" / "__init__.py")
    missing = sorted(str(p.relative_to(ROOT)) for p in files if not _covered(p, deps))
    assert not missing, f"{stage}: imported but not a dvc.yaml dep: {missing}"
    assert "stages/__init__.py" in deps


def test_measuring_stages_depend_on_env():
    stages = _stages()
    env = stages["env"]
    assert env.get("always_changed") is True
    env_out = [next(iter(o)) if isinstance(o, dict) else o for o in env["outs"]]
    assert env_out and all(not (isinstance(o, dict) and next(iter(o.values())).get("cache") is False)
                           for o in env["outs"]), "env's output must be cached"
    for name in MEASURING:
        assert env_out[0] in stages[name]["deps"], f"{name} does not depend on {env_out[0]}"


def test_closure_sees_lazy_and_package_imports(tmp_path):
    # the walker itself: cli imports check only inside run_stage, tracking imports tracking_store
    files = {p.relative_to(ROOT).as_posix() for p in closure(ROOT / "stages" / "prepare.py")}
    assert {"src/llmbench/check.py", "src/llmbench/tracking_store.py",
            "src/llmbench/__init__.py"} <= files


def test_llamacpp_stages_track_every_runtime_key_and_not_the_quantization_list():
    # the list (and requantize_shipped) is quantize@'s; the llamacpp stages see it through the
    # GGUF folder, so editing it reruns only the models whose GGUFs changed (tests/test_e2e.py)
    from llmbench.config import LlamaCppBackend

    runtime = {f"backends.llamacpp.{k}" for k in LlamaCppBackend.model_fields} - {
        "backends.llamacpp.quantizations", "backends.llamacpp.requantize_shipped"}
    stages = _stages()
    for name in ("infer-llamacpp", "profile-llamacpp", "evaluate-llamacpp"):
        params = set(stages[name]["params"])
        assert runtime <= params, (name, runtime - params)
        assert not any(p in ("backends", "backends.llamacpp") or "quantiz" in p for p in params), name
    assert "backends.llamacpp.quantizations" in stages["quantize"]["params"]
