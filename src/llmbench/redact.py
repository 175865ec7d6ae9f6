"""Secrets never leave the process: URL credentials, secret-looking query parameters and the values
of secret-looking environment variables are masked in MLflow params/tags, log lines and errors.

    redact("https://alice:pw@host/x?token=abc")  ->  "https://alice:***@host/x?token=***"
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any

MASK = "***"
# env var names that hold secrets (HF_TOKEN, AWS_SECRET_ACCESS_KEY, PGPASSWORD, ...)
SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
# shorter values ("1", "true", "yes") are flags, and masking them would mangle ordinary text
MIN_SECRET_LEN = 6
# scheme://user:password@host -> scheme://user:***@host (the user name stays: it says who)
_URL_CREDS = re.compile(r"(?P<pre>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@?#\"'<>]*):[^\s@/?#\"'<>]+@")
# ?token=..., &api_key=..., &X-Amz-Signature=... (signed and tokened URLs)
_QUERY = re.compile(r"(?i)(?P<pre>[?&;][\w.\-]*(?:token|key|secret|password|passwd|signature|sig)"
                    r"[\w.\-]*=)[^&#\s\"'<>]+")


def _env_secrets() -> list[str]:
    # read at each call: a token exported after import is masked too; longest first so that a
    # secret containing another one is masked whole
    values = {v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def redact(text: Any) -> str:
    """`text` as a string with every known kind of secret replaced by ***."""
    out = text if isinstance(text, str) else str(text)
    for value in _env_secrets():
        if value in out:
            out = out.replace(value, MASK)
    out = _URL_CREDS.sub(lambda m: f"{m['pre']}:{MASK}@", out)
    return _QUERY.sub(lambda m: f"{m['pre']}{MASK}", out)


def redact_obj(obj: Any) -> Any:
    """Strings anywhere in nested dicts/lists/tuples redacted; other leaves unchanged."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_obj(v) for v in obj)
    return obj


def error_line(exc: BaseException) -> str:
    """The one line a stage prints for an error: its message, redacted, on one line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return redact(text)


class RedactFilter(logging.Filter):
    """For any logging handler (ours or a library's): the rendered message is redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True
