"""JSON-lines logging, set up once per stage process: to stderr and logs/<stage>[@<model>].jsonl."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

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
        return json.dumps(row, default=str)


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
    return logger


def log_event(event: str, **fields) -> None:
    logging.getLogger(LOGGER).info(event, extra={"fields": fields})
