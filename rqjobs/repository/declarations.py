"""A declaration of an outline (a class, a function...), with the limits and the doc summary all languages share."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_DECLARATIONS = 200  # per file, children included
MAX_SIGNATURE = 300  # characters
MAX_DOC = 300  # characters


@dataclass(slots=True)
class Declaration:
    """One outline entry: a class, function, method, struct, ... with its children (a class's methods)."""

    kind: str
    name: str
    signature: str
    line: int
    doc: str = ''
    children: list[Declaration] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            'kind': self.kind,
            'name': self.name,
            'signature': self.signature,
            'line': self.line,
            'doc': self.doc,
            'children': [child.to_dict() for child in self.children],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Declaration:
        return cls(
            data['kind'],
            data['name'],
            data['signature'],
            data['line'],
            data.get('doc', ''),
            [cls.from_dict(child) for child in data.get('children', ())],
        )


# A doc summary is the first paragraph of a doc comment: a blank line ends it, and so does a tag line (@param ...),
# since tags are not prose.
_PARAGRAPH_END = re.compile(r'\n[ \t]*(?:\r?\n|@)')


def doc_summary(text: str) -> str:
    text = text.strip()
    if text.startswith('@'):
        return ''
    end = _PARAGRAPH_END.search(text, 0, 4 * MAX_DOC)
    return shorten(' '.join(text[: end.start() if end else 4 * MAX_DOC].split()), MAX_DOC)


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + '…'
