"""Names that become one path component (an organism, diff, challenge or testbed directory): one rule, checked
where a config is validated, so no name can point outside its output directory."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

MAX_NAME_BYTES = 200  # below the 255 bytes most file systems allow, leaving room for `.NAME.partial` and suffixes


def path_name_problem(name: str) -> str | None:
    """Why `name` cannot be a directory name of its own, or None when it can."""
    if not name or not name.strip():
        return "is empty"
    if "/" in name or "\\" in name:
        return "must be a plain directory name, without '/' or '\\'"
    if name.startswith("."):
        return "must not start with '.' (hidden, '..', and the workbench's .NAME.partial directories)"
    if not name.isprintable():
        return "must not hold control characters (a NUL byte, a newline, ...)"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    return None


def _checked(name: str) -> str:
    problem = path_name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


PathName = Annotated[str, AfterValidator(_checked)]
"""A config field type: a string that is safe as one directory name."""
