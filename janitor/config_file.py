"""The YAML file of ``--config`` (README "Configuration"): read strictly, and every problem
worded without quoting the file, which may hold passwords."""

from __future__ import annotations

import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

from janitor.errors import ConfigurationError

# No setting needs a longer number; Python's int() raises on more than 4300 digits.
_LONGEST_NUMBER = 100


class _DuplicateKey(Exception):
    def __init__(self, key: object, mark: yaml.Mark) -> None:
        super().__init__(key)
        self.key = key
        self.mark = mark


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice (PyYAML keeps the last one silently),
    leaves an absurdly long number as text, for the setting's own check to refuse, and
    reports a value that does not read as its explicit tag (``!!int abc``) at its line."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, KeyError, AttributeError) as exc:
            # PyYAML's scalar constructors raise these, unmarked, for a malformed tagged value.
            raise yaml.constructor.ConstructorError(
                None, None, f"the value does not read as {node.tag}", node.start_mark
            ) from exc

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Hashable] = set()
        # Anything else (!!set on a list) is refused by SafeLoader's own check.
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable):
                if key in seen:
                    raise _DuplicateKey(key, key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_number(self, node: yaml.ScalarNode) -> int | str:
        text = self.construct_scalar(node)
        return text if len(text) > _LONGEST_NUMBER else self.construct_yaml_int(node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_number)


def read_yaml(path: Path) -> Any:
    """The document of the file at ``path`` (None when empty). Raises ConfigurationError
    naming the file, and the line where there is one."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"--config {path}: cannot read the file ({exc.strerror})"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"--config {path}: not UTF-8 text (byte {exc.start})") from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except _DuplicateKey as exc:
        raise ConfigurationError(
            f"--config {path}: line {exc.mark.line + 1}: {exc.key!r} is given twice"
        ) from None
    except (yaml.MarkedYAMLError, yaml.reader.ReaderError) as exc:
        raise ConfigurationError(f"--config {path}: not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise ConfigurationError(f"--config {path}: not valid YAML: nested too deeply") from None


# PyYAML quotes text of the file in some problems (an undefined alias or tag: a password
# starting with * or !). Kept: single characters and PyYAML's own token names.
_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")
_HARMLESS = re.compile(r".?|\\[a-z0-9]+|<[a-z ]+>")


def _yaml_problem(exc: yaml.MarkedYAMLError | yaml.reader.ReaderError) -> str:
    """Where and what, in one line, never the line itself: it may hold a password."""
    if isinstance(exc, yaml.reader.ReaderError):
        return f"character #x{exc.character:04x} at position {exc.position}: {exc.reason}"
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = " ".join((exc.problem or exc.context or "syntax error").split())
    return where + _QUOTED.sub(
        lambda m: m[0] if _HARMLESS.fullmatch(m[1] or m[2] or "") else "'...'", problem
    )
