"""HF folder -> GGUF (the vendored converter of the pinned llama.cpp) -> quantized GGUF types.

Both steps write a temporary file beside the target and rename it into place, so a crash or a
full disk leaves either the old file or nothing, never a half-written GGUF.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from llmbench.errors import UserError

VENDOR = Path(__file__).resolve().parents[1] / "vendor" / "llama_cpp_convert"
CONVERTER = VENDOR / "convert_hf_to_gguf.py"
# what a converted file depends on besides its source weights (a DVC param / cache key)
CONVERTER_VERSION = "llama.cpp 0c1e57098bba43ac29e6e3b677cdceebdd22334f (llama-cpp-python 0.3.36)"
OUTTYPES = ("f32", "f16", "bf16")  # the converter's own outtypes we use; quantize() does the rest


class Unsupported(Exception):
    """The converter cannot handle this model (a status, not a crash): `reason` is one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _tmp_for(dst: Path) -> Path:
    return dst.with_name(f".{dst.name}.{os.getpid()}.tmp")


def _reason(log: str) -> str:
    """The converter's one-line reason from its log (a logger.error line, else the exception)."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for ln in lines:  # "ERROR:hf-to-gguf:Model GPTNeoForCausalLM is not supported"
        m = re.search(r"ERROR:[\w.-]+:(.*)", ln)
        if m:
            return m.group(1).strip()
    for ln in reversed(lines):  # last line of a traceback: "NotImplementedError: ..."
        if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", ln):
            return ln
    return lines[-1] if lines else "no output"


_UNSUPPORTED = re.compile(r"is not supported|NotImplementedError|not recognized|Can not map tensor|"
                          r"Unsupported|unknown architecture", re.I)


def _config_fixes(config: dict) -> dict:
    """Keys the pinned converter reads that transformers 5 no longer writes (config.json only)."""
    fixes = {}
    if config.get("model_type") == "gpt2" and "n_ctx" not in config and "n_positions" in config:
        fixes["n_ctx"] = config["n_positions"]  # GPT-2's converter reads hparams["n_ctx"]
    return fixes


def _converter_input(hf_dir: Path, scratch: Path) -> Path:
    """hf_dir itself, or (when config.json needs fixes) a folder of symlinks + a fixed config."""
    config = json.loads((hf_dir / "config.json").read_text())
    fixes = _config_fixes(config)
    if not fixes:
        return hf_dir
    view = scratch / hf_dir.name
    view.mkdir()
    for f in hf_dir.iterdir():
        if f.name != "config.json":
            (view / f.name).symlink_to(f.resolve())
    (view / "config.json").write_text(json.dumps({**config, **fixes}, indent=1))
    return view


def convert(hf_dir: str | Path, out_gguf: str | Path, outtype: str = "f16",
            timeout_s: float = 3600) -> Path:
    """Convert an HF model folder (config.json, safetensors, tokenizer) to one GGUF file.

    Runs the vendored converter as a subprocess of this python: its imports (torch, its own
    gguf-py first on sys.path) and logging stay out of the calling stage.
    Unsupported architecture or tokenizer -> `Unsupported(reason)`; other failures -> UserError."""
    hf_dir, out = Path(hf_dir), Path(out_gguf)
    if outtype not in OUTTYPES:
        raise UserError(f"convert: outtype '{outtype}' is not one of {', '.join(OUTTYPES)} "
                        "(quantized types come from quantize())")
    if not (hf_dir / "config.json").is_file():
        raise UserError(f"{hf_dir}: not an HF model folder (no config.json)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_for(out)
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("NO_LOCAL_GGUF", None)  # the converter must use its own gguf-py, not the registry's
    try:
        with tempfile.TemporaryDirectory(prefix="llmbench-convert-") as scratch:
            src = _converter_input(hf_dir, Path(scratch))
            cmd = [sys.executable, str(CONVERTER), str(src), "--outfile", str(tmp), "--outtype", outtype]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{hf_dir.name}: GGUF conversion took over {timeout_s:.0f} s") from None
    if proc.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        reason = _reason(proc.stderr + "\n" + proc.stdout)
        if proc.returncode < 0:  # e.g. SIGXFSZ (file size limit) or SIGKILL (out of memory)
            reason = f"converter killed by signal {-proc.returncode}"
        if "No space left" in proc.stderr:
            raise UserError(f"{hf_dir.name}: disk full while converting to {out} (nothing written)")
        if _UNSUPPORTED.search(reason):
            raise Unsupported(f"llama.cpp converter: {reason}")
        raise UserError(f"{hf_dir.name}: GGUF conversion failed: {reason}")
    os.replace(tmp, out)
    return out


def quant_types() -> dict[str, int]:
    """Type name (as llama.cpp's quantize tool spells it: F16, Q8_0, Q4_K_M, ...) -> ftype id."""
    import llama_cpp

    types = {}
    for attr in dir(llama_cpp):
        if attr.startswith(("LLAMA_FTYPE_MOSTLY_", "LLAMA_FTYPE_ALL_")):
            name = attr.removeprefix("LLAMA_FTYPE_MOSTLY_").removeprefix("LLAMA_FTYPE_ALL_")
            types[name] = int(getattr(llama_cpp, attr))
    return types


def quantize(src_gguf: str | Path, dst_gguf: str | Path, type_name: str,
             threads: int | None = None) -> Path:
    """Quantize a (F32/F16/BF16) GGUF to `type_name` with the same llama.cpp that runs it.

    K-quants need tensor rows divisible by 256; llama.cpp silently falls back to other types for
    the rest, so record `llamacpp.inspect_gguf(dst).bits_per_weight`, not only the name."""
    from llmbench.backends import llamacpp  # sets OMP_WAIT_POLICY before llama_cpp loads

    import llama_cpp

    src, dst = Path(src_gguf), Path(dst_gguf)
    types = quant_types()
    if type_name not in types:
        raise UserError(f"unknown GGUF quantization type '{type_name}' "
                        f"(known: {', '.join(sorted(types))})")
    if not src.is_file():
        raise UserError(f"GGUF file not found: {src}")
    llamacpp.inspect_gguf(src)  # corrupt/truncated source -> one-line UserError before llama.cpp
    llamacpp._init_backend()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = types[type_name]
    params.nthread = threads or os.cpu_count() or 1
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_for(dst)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise UserError(f"{src.name}: llama.cpp could not quantize to {type_name} (rc {rc}; "
                        "disk full, or a type this model's tensors do not allow)")
    os.replace(tmp, dst)
    return dst
