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
    from rqjobs.settings import is_sentinel_url

    url = connections.redis_url(obj.settings)
    if is_sentinel_url(url):
        click.echo('A Sentinel URL: rq takes it with -c rqjobs.rqconfig, not with --url.', err=True)
    click.echo(url)


@redis_group.command('stop')
@click.pass_obj
def redis_stop(obj) -> None:
    """Stop the embedded Redis server; its data stays on disk for the next start."""
    from rqjobs.embedded import EmbeddedRedis

    if obj.settings.redis_url:
        raise click.UsageError('REDIS_URL is set, so no embedded Redis is in use; stop that server with its own tools.')
    server = EmbeddedRedis(obj.settings.data_dir / 'redis')
    click.echo('Embedded Redis stopped.' if server.stop() else 'Embedded Redis was not running.')
