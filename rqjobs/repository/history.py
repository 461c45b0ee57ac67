"""Read a clone's history: its HEAD, branch, commits, ancestry and the paths changed between two commits."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from rqjobs.exceptions import GitError
from rqjobs.repository.runner import clone_dir, open_repo, read, succeeds

_SHA = re.compile(r'[0-9a-fA-F]{4,64}')


def head_commit(dest: Path) -> str:
    """Return the sha (40 hex digits) of the clone's HEAD commit."""
    return read(dest, 'rev-parse', '--verify', '--quiet', 'HEAD^{commit}').strip()


def current_branch(dest: Path) -> str:
    """Return the name of the branch checked out in the clone."""
    clone_dir(dest)
    try:
        return read(dest, 'symbolic-ref', '--quiet', '--short', 'HEAD').strip()
    except GitError:
        raise GitError(f'The clone at {dest} has no branch checked out (a detached HEAD).') from None


def has_commit(dest: Path, sha: str) -> bool:
    """Return whether the clone holds the commit `sha`; False for anything that is not a sha."""
    clone_dir(dest)
    sha = _sha(sha)
    return sha is not None and succeeds(dest, 'cat-file', '-e', f'{sha}^{{commit}}')


def is_ancestor(dest: Path, old: str, new: str) -> bool:
    """Return whether `old` is an ancestor of (or equal to) `new`; False when either is unknown."""
    clone_dir(dest)
    old, new = _sha(old), _sha(new)
    return old is not None and new is not None and succeeds(dest, 'merge-base', '--is-ancestor', old, new)


def changed_paths(dest: Path, old: str, new: str) -> dict[str, str] | None:
    """Return {path: A/M/D/T} from `old` to `new` (a rename is D + A), or None when history was rewritten.

    None means `old` is unknown or not an ancestor of `new` (a force-push): the caller regenerates everything.
    """
    if not has_commit(dest, old) or not is_ancestor(dest, old, new):
        return None
    fields = read(dest, 'diff-tree', '-r', '-z', '--no-renames', '--name-status', _sha(old), _sha(new)).split('\0')
    changes: dict[str, str] = {}
    index = 0
    while index + 1 < len(fields) and fields[index]:
        status = fields[index][0]
        if status in 'RC':  # not with --no-renames, but a rename or copy would carry two paths
            if status == 'R':
                changes[fields[index + 1]] = 'D'
            changes[fields[index + 2]] = 'A'
            index += 3
        else:
            changes[fields[index + 1]] = status
            index += 2
    return changes


def recent_commits(dest: Path, limit: int = 20, since: str | None = None) -> list[dict]:
    """Return the newest commits of HEAD, newest first; with a known `since`, only those after it.

    Each is {'sha', 'title', 'description', 'author' (name only), 'committed_at' (naive UTC datetime)}.
    """
    if limit <= 0:
        return []
    revision = f'{_sha(since)}..HEAD' if since is not None and has_commit(dest, since) else 'HEAD'
    with open_repo(dest) as repo:
        commits = []
        for commit in repo.iter_commits(revision, max_count=limit):
            message = commit.message if isinstance(commit.message, str) else commit.message.decode('utf-8', 'replace')
            title, _, description = message.strip().partition('\n')
            commits.append(
                {
                    'sha': commit.hexsha,
                    'title': title.strip(),
                    'description': description.strip(),
                    'author': commit.author.name or '',
                    'committed_at': datetime.fromtimestamp(commit.committed_date, UTC).replace(tzinfo=None),
                }
            )
        return commits


def _sha(value: str | None) -> str | None:
    """Return `value` as a lower-case sha, or None when it is not one; only such strings ever reach git."""
    return value.lower() if isinstance(value, str) and _SHA.fullmatch(value) else None
