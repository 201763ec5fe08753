"""Reading files, the one way: every failure is a one-line `UserError` that names the file and what it was for.

Everything the workbench reads goes through here: the configs, chats, prompts, clue banks, universes and directions
a user hands it, and the JSON it wrote itself (a damaged output directory is a clear error, not a traceback).
Nothing here unpickles. YAML is read with a bounded safe loader: duplicate keys are an error (not last-wins), and
nesting and alias expansion are capped, so a hostile file cannot exhaust memory while it is read or reported.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from mow.workbench.errors import UserError

MAX_NESTING = 64  # levels of YAML/JSON nesting; the deepest config the workbench ships has 4
MAX_YAML_NODES = 200_000  # YAML nodes after aliases are expanded: far above any config, far below an alias bomb


def shown(path: Path | str) -> str:
    """A path as an error message shows it: control characters (a NUL byte, say) escaped."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def read_bytes(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{shown(path)}: {what} not found") from None
    except IsADirectoryError:
        raise UserError(f"{shown(path)}: {what} is a directory, expected a file") from None
    except PermissionError:
        raise UserError(f"{shown(path)}: cannot read {what}: permission denied") from None
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte, an I/O error
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UserError(f"{shown(path)}: cannot read {what}: {reason}") from None


def read_text(path: Path, what: str) -> str:
    """A UTF-8 text file."""
    data = read_bytes(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{shown(path)}: {what} is not UTF-8 text (bad byte at offset {exc.start})") from None


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON/YAML, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_NESTING:
            break
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _type_name(kind: type | tuple[type, ...]) -> str:
    names: dict[type, str] = {dict: "an object (mapping)", list: "a list", str: "a string"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def parse_json(text: str, source: str, what: str, expect: type | tuple[type, ...] | None = None,
               line: int | None = None) -> Any:
    """JSON text from `source`; `line` is the text's line in its file (a jsonl line), else the error counts lines."""
    if line is not None:
        source = f"{source}:{line}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        at = source if line is not None else f"{source}:{exc.lineno}"
        raise UserError(f"{at}: {what} is not valid JSON: {exc.msg}") from None
    except RecursionError:
        raise UserError(f"{source}: {what} is nested too deeply (limit {MAX_NESTING} levels)") from None
    if _depth(value) > MAX_NESTING:
        raise UserError(f"{source}: {what} is nested too deeply (limit {MAX_NESTING} levels)")
    if expect is not None and not isinstance(value, expect):
        raise UserError(f"{source}: {what} must hold {_type_name(expect)}, got {type(value).__name__}")
    return value


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB blocks (a weights file need not fit in memory twice)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path, what: str, expect: type | tuple[type, ...] | None = dict) -> Any:
    """A JSON file whose top level is `expect` (a mapping unless told)."""
    return parse_json(read_text(path, what), shown(path), what, expect)


def numbered_jsonl(path: Path, what: str, line_what: str | None = None) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON-lines file; errors name the line."""
    line_what = line_what or f"a line of the {what}"
    return [(number, parse_json(line, shown(path), line_what, dict, line=number))
            for number, line in enumerate(read_text(path, what).splitlines(), start=1) if line.strip()]


def read_jsonl(path: Path, what: str) -> list[dict]:
    """A JSON-lines file of objects; blank lines are skipped; errors name the line."""
    return [row for _, row in numbered_jsonl(path, what)]


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with duplicate keys refused (YAML says keys are unique; PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}",
                                                            key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: yaml.Node) -> tuple[int, int]:
    """(nodes, depth) of a composed document with its aliases expanded, counted once per distinct node."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in size:
            continue
        children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                    else list(node.value) if isinstance(node, yaml.SequenceNode) else [])
        if children_done:
            size[id(node)] = 1 + sum(size[id(c)] for c in children)
            depth[id(node)] = 1 + max((depth[id(c)] for c in children), default=0)
        elif id(node) not in depth:
            depth[id(node)] = -1  # on the stack: a recursive alias points back here
            stack.append((node, True))
            for child in children:
                if depth.get(id(child)) == -1:
                    return MAX_YAML_NODES + 1, 0
                stack.append((child, False))
    return size[id(root)], depth[id(root)]


def parse_yaml(text: str, source: str) -> Any:
    """One YAML document, safely; errors are one line that names `source` (and the line)."""
    loader = None
    try:
        loader = _BoundedLoader(text)  # the reader refuses control characters here
        node = loader.get_single_node()
        if node is None:
            return None
        nodes, depth = _expanded_size(node)
        if nodes > MAX_YAML_NODES:
            raise UserError(f"{source}: YAML expands to more than {MAX_YAML_NODES} values (an alias bomb?)")
        if depth > MAX_NESTING:
            raise UserError(f"{source}: YAML is nested too deeply (limit {MAX_NESTING} levels)")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{source}{where}: YAML does not parse: {problem}") from None
    except RecursionError:
        raise UserError(f"{source}: YAML is nested too deeply (limit {MAX_NESTING} levels)") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: Path, what: str, expect: type | tuple[type, ...] | None = dict) -> Any:
    """A YAML file whose top level is `expect` (a mapping unless told; an empty file reads as an empty one)."""
    value = parse_yaml(read_text(path, what), shown(path))
    if value is None and expect is dict:
        return {}
    if expect is not None and not isinstance(value, expect):
        raise UserError(f"{shown(path)}: {what} must hold {_type_name(expect)} at the top level, "
                        f"got {type(value).__name__}")
    return value
