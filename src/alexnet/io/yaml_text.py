"""YAML a user wrote (recipes): yaml.safe_load, but a key given twice in one mapping is an error, not the last
one silently kept, and invalid YAML is one line naming where it came from."""

from __future__ import annotations

from typing import Any

import yaml

from ..errors import UserError


class _UniqueKeys(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [(self.construct_object(k, deep=deep), k.start_mark.line + 1) for k, _ in node.value]
        for i, (key, line) in enumerate(keys):
            if key in [k for k, _ in keys[:i]]:
                raise yaml.constructor.ConstructorError(None, None, f"{key!r} given twice, at line {line}")
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, where: str) -> Any:
    """``text`` as safe_load reads it (None when empty), or a UserError: "WHERE: not valid YAML (...)"."""
    try:
        return yaml.load(text, _UniqueKeys)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        raise UserError(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from None
