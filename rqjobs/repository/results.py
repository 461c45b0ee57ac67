"""What an analysis finds: the analysed files and their declarations, and the whole repository's findings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rqjobs.repository.declarations import Declaration


@dataclass(slots=True)
class SourceFile:
    """One analysed text file; `path` is repository-relative, decoded from git's bytes with errors='replace'."""

    path: str
    language: str | None
    size: int
    lines: int
    declarations: list[Declaration] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            'path': self.path,
            'language': self.language,
            'size': self.size,
            'lines': self.lines,
            'declarations': [declaration.to_dict() for declaration in self.declarations],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SourceFile:
        return cls(
            data['path'],
            data.get('language'),
            data['size'],
            data['lines'],
            [Declaration.from_dict(item) for item in data.get('declarations', ())],
        )


@dataclass
class Analysis:
    """What `analyse()` found in a checkout; `to_dict()` is JSON-safe and `from_dict()` reads it back."""

    files: list[SourceFile]
    skipped: dict[str, int]
    languages: list[dict]
    readme_path: str | None
    readme: str
    tree: str
    classification: str
    components: list[dict]
    total_files: int
    total_bytes: int
    elapsed: float = 0.0
    _index: dict[str, SourceFile] | None = field(default=None, init=False, repr=False, compare=False)

    def file(self, path: str) -> SourceFile | None:
        """Return the analysed file at a repository-relative path, or None."""
        if self._index is None:
            self._index = {source.path: source for source in self.files}
        return self._index.get(path)

    def to_dict(self) -> dict:
        return {
            'files': [source.to_dict() for source in self.files],
            'skipped': dict(self.skipped),
            'languages': [dict(row) for row in self.languages],
            'readme_path': self.readme_path,
            'readme': self.readme,
            'tree': self.tree,
            'classification': self.classification,
            'components': [
                dict(component, files=list(component['files']), languages=list(component['languages']))
                for component in self.components
            ],
            'total_files': self.total_files,
            'total_bytes': self.total_bytes,
            'elapsed': self.elapsed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Analysis:
        return cls(
            files=[SourceFile.from_dict(item) for item in data.get('files', ())],
            skipped=dict(data.get('skipped', {})),
            languages=[dict(row) for row in data.get('languages', ())],
            readme_path=data.get('readme_path'),
            readme=data.get('readme', ''),
            tree=data.get('tree', ''),
            classification=data.get('classification', 'Applications'),
            components=[dict(component) for component in data.get('components', ())],
            total_files=data.get('total_files', 0),
            total_bytes=data.get('total_bytes', 0),
            elapsed=data.get('elapsed', 0.0),
        )
