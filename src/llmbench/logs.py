"""JSON-lines logging, set up once per stage process: to stderr and logs/<stage>[@<model>].jsonl.
Every line is redacted (llmbench.redact): a URL with credentials or a token never reaches a log."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from llmbench.redact import RedactFilter, redact, redact_obj

LOGGER = "llmbench"


class JsonLines(logging.Formatter):
    def __init__(self, stage: str, model: str | None):
        super().__init__()
        self.stage, self.model = stage, model

    def format(self, record: logging.LogRecord) -> str:
        row = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
               + f".{int(record.msecs):03d}Z", "level": record.levelname.lower(),
               "stage": self.stage, "model": self.model, "event": record.getMessage()}
        row.update(getattr(record, "fields", {}))
        if record.exc_info:
            row["error"] = self.formatException(record.exc_info)
        # redact the values before encoding: an escaped secret would no longer match
        return json.dumps(redact_obj(row), default=redact)


def setup_logging(stage: str, model: str | None, logs_dir: Path) -> logging.Logger:
    logger = logging.getLogger(LOGGER)
    logger.handlers.clear()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    fmt = JsonLines(stage, model)
    Path(logs_dir).mkdir(parents=True, exist_ok=True)
    name = f"{stage}@{model}" if model else stage
    for handler in (logging.StreamHandler(sys.stderr),
                    logging.FileHandler(Path(logs_dir) / f"{name}.jsonl", mode="w")):
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    redact_library_logs()
    return logger


def redact_library_logs(names: tuple[str, ...] = ("mlflow", "alembic", "urllib3", "")) -> None:
    """Libraries print to stderr through their own handlers (MLflow's on the `mlflow` logger, the
    root logger's lastResort): redact those lines too. Idempotent."""
    handlers = [h for n in names for h in logging.getLogger(n).handlers]
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    for handler in handlers:
        if not any(isinstance(f, RedactFilter) for f in handler.filters):
            handler.addFilter(RedactFilter())


def log_event(event: str, **fields) -> None:
    logging.getLogger(LOGGER).info(event, extra={"fields": fields})
