"""Reading the user's YAML files (`atc run --config`, `atc sweep --grid`) with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kernels.errors import ATCUserError


def load_yaml_file(path: str | Path, what: str) -> Any:
    """The parsed content of `path` ({} for an empty file); unreadable files and YAML syntax errors
    become an ATCUserError naming the file, `what` it is, and the line."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ATCUserError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ATCUserError(f"{path}:{where} not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    return {} if loaded is None else loaded
