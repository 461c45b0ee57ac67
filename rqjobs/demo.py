"""`jobs demo`: a real local repository in several languages, documented end to end by a real worker."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

FILES = {
    'README.md': """\
        # Inkwell

        Inkwell turns plain-text notes into a searchable static site. It ships a command line, a small web server
        and a Go indexer.

        ## Installation

        ```sh
        pip install inkwell
        ```

        ## Usage

        ```sh
        inkwell build notes/ --out site/
        inkwell serve site/
        ```

        ## License

        MIT
        """,
    'pyproject.toml': """\
        [project]
        name = "inkwell"
        version = "0.3.0"

        [project.scripts]
        inkwell = "inkwell.cli:main"
        """,
    'inkwell/__init__.py': '"""Inkwell: notes to static sites."""\n',
    'inkwell/cli.py': '''\
        """Command line of Inkwell."""

        import argparse

        from inkwell.site import Site


        def main(argv: list[str] | None = None) -> int:
            """Parse arguments and build or serve a site."""
            parser = argparse.ArgumentParser(prog="inkwell")
            parser.add_argument("command", choices=["build", "serve"])
            parser.add_argument("path")
            args = parser.parse_args(argv)
            site = Site(args.path)
            return site.build() if args.command == "build" else site.serve()
        ''',
    'inkwell/site.py': '''\
        """Building a site from a folder of notes."""

        from dataclasses import dataclass
        from pathlib import Path


        @dataclass
        class Note:
            """One note: its title and markdown body."""

            title: str
            body: str

            def slug(self) -> str:
                """Return the URL slug of the note."""
                return self.title.lower().replace(" ", "-")


        class Site:
            """A static site rendered from notes."""

            def __init__(self, root: str, *, theme: str = "plain") -> None:
                self.root = Path(root)
                self.theme = theme

            def notes(self) -> list[Note]:
                """Load every note below the root."""
                return [Note(p.stem, p.read_text()) for p in sorted(self.root.glob("**/*.md"))]

            def build(self, out: str = "site") -> int:
                """Render every note to HTML under `out`."""
                return len(self.notes())

            async def serve(self, port: int = 8000) -> int:
                """Serve the built site until stopped."""
                return port
        ''',
    'web/app.js': '''\
        /** Search box of the generated site. */
        export function search(index, query) {
          return index.filter((entry) => entry.title.includes(query));
        }

        export class SearchBox {
          constructor(element, index) {
            this.element = element;
            this.index = index;
          }

          render(results) {
            this.element.textContent = results.map((r) => r.title).join(", ");
          }
        }
        ''',
    'indexer/main.go': '''\
        package main

        import "fmt"

        // Index maps words to the notes that contain them.
        type Index struct {
        \tWords map[string][]string
        }

        // Add records the words of one note.
        func (i *Index) Add(note string, words []string) {
        \tfor _, w := range words {
        \t\ti.Words[w] = append(i.Words[w], note)
        \t}
        }

        func main() {
        \tfmt.Println("indexer ready")
        }
        ''',
    'native/render.c': '''\
        #include <string.h>

        /* Count the headings of a markdown buffer. */
        int count_headings(const char *text) {
            int count = 0;
            for (const char *p = text; *p; p++) {
                if (*p == '#' && (p == text || p[-1] == '\\n')) count++;
            }
            return count;
        }
        ''',
    'Dockerfile': 'FROM python:3.12-slim\nCOPY . /app\nRUN pip install /app\nCMD ["inkwell", "serve", "/site"]\n',
}

LATER = {
    'inkwell/feeds.rs': '''\
        /// An RSS feed of the newest notes.
        pub struct Feed {
            pub title: String,
        }

        impl Feed {
            /// Render the feed as XML.
            pub fn render(&self) -> String {
                format!("<rss><title>{}</title></rss>", self.title)
            }
        }
        ''',
}


def build_repository(path: Path) -> Path:
    """Create (or reuse) the demo repository at `path`: three commits in Python, JS, Go, C and Rust."""
    if (path / '.git').is_dir():
        return path
    path.mkdir(parents=True, exist_ok=True)
    _git(path, 'init', '-q', '-b', 'main')
    _write(path, {name: text for name, text in FILES.items() if not name.startswith(('web/', 'native/'))})
    _git(path, 'add', '-A')
    _git(path, 'commit', '-q', '-m', 'Start Inkwell: the Python command line and site builder')
    _write(path, {name: text for name, text in FILES.items() if name.startswith(('web/', 'native/'))})
    _git(path, 'add', '-A')
    _git(path, 'commit', '-q', '-m', 'Add the search box and the native renderer')
    _write(path, LATER)
    _git(path, 'add', '-A')
    _git(path, 'commit', '-q', '-m', 'Add RSS feeds')
    return path


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))


def _git(root: Path, *args: str) -> None:
    env = {'PATH': os.environ.get('PATH', '/usr/bin:/bin'), 'HOME': str(root), 'GIT_CONFIG_NOSYSTEM': '1',
           'GIT_AUTHOR_NAME': 'Inkwell Demo', 'GIT_AUTHOR_EMAIL': 'demo@inkwell.invalid',
           'GIT_COMMITTER_NAME': 'Inkwell Demo', 'GIT_COMMITTER_EMAIL': 'demo@inkwell.invalid'}
    subprocess.run(['git', *args], cwd=root, env=env, check=True, capture_output=True)
