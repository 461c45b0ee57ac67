"""`rqjobs redis`: the embedded Redis server."""

from __future__ import annotations

import click


@click.group('redis')
def redis_group() -> None:
    """The embedded Redis server (used when REDIS_URL is unset), one per data directory."""


@redis_group.command('url')
@click.pass_obj
def redis_url(obj) -> None:
    """Print the URL of the project's Redis (starting the embedded one if needed), for rq and rq-dashboard.

    With REDIS_URL set, that URL is printed as it is, password included. Example:
    rq info --url "$(rqjobs redis url)"
    """
    from rqjobs import connections

    click.echo(connections.redis_url(obj.settings))


@redis_group.command('stop')
@click.pass_obj
def redis_stop(obj) -> None:
    """Stop the embedded Redis server; its data stays on disk for the next start."""
    from rqjobs.embedded import EmbeddedRedis

    if obj.settings.redis_url:
        raise click.UsageError('REDIS_URL is set, so no embedded Redis is in use; stop that server with its own tools.')
    server = EmbeddedRedis(obj.settings.data_dir / 'redis')
    click.echo('Embedded Redis stopped.' if server.stop() else 'Embedded Redis was not running.')
