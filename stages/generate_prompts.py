"""generate-prompts: seeded prompts (templates x topics x length buckets, chat/plain variants)."""
from pathlib import Path

from llmbench.cli import run_stage
from llmbench.config import Params
from llmbench.io import sha256_file, write_jsonl_atomic
from llmbench.logs import log_event
from llmbench.models import gpt2_tokenizer
from llmbench.prompts import generate
from llmbench.tracking import stage_run


def main(params: Params) -> None:
    cfg = params.prompts
    tok = gpt2_tokenizer()  # lengths are measured in GPT-2 tokens, one ruler for every model
    with stage_run("generate-prompts", None, params, logged_params=cfg.model_dump(mode="json")) as run:
        rows = generate(cfg.seed, cfg.n, cfg.buckets, cfg.variants,
                        lambda text: len(tok(text).input_ids))
        path = write_jsonl_atomic(Path(params.paths.prompts), rows)
        log_event("prompts written", path=str(path), n=len(rows), sha256=sha256_file(path))
        run.log_metrics({"n_prompts": len(rows)})
        run.log_artifact(path)


if __name__ == "__main__":
    run_stage("generate-prompts", main)
