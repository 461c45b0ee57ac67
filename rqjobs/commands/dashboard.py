"""`rqjobs dashboard`: rq-dashboard on the project's Redis."""

from __future__ import annotations

import click


@click.command()
@click.option(
    '--bind',
    default='127.0.0.1',
    show_default=True,
    envvar='DASHBOARD_BIND',
    help='Address to listen on; keep the default unless a proxy with authentication is in front.',
)
@click.option(
    '--port',
    type=click.IntRange(1, 65535),
    default=9181,
    show_default=True,
    envvar='DASHBOARD_PORT',
    help='Port to listen on.',
)
@click.option('--username', envvar='DASHBOARD_USERNAME', help='Basic-auth user name (required off localhost).')
@click.option(
    '--password-env',
    default='DASHBOARD_PASSWORD',
    show_default=True,
    metavar='VAR',
    help='Environment variable holding the basic-auth password (never pass it as an argument).',
)
@click.pass_obj
def dashboard(obj, bind: str, port: int, username: str | None, password_env: str) -> None:
    """Run rq-dashboard on the project's Redis, reading the JSON job payloads.

    It listens on 127.0.0.1 by default. To listen on another address, set DASHBOARD_USERNAME and
    DASHBOARD_PASSWORD: basic auth is then required.
    """
    import errno
    import os

    from rqjobs import connections
    from rqjobs import dashboard as dashboard_module
    from rqjobs.exceptions import SettingsError

    password = os.environ.get(password_env) or None
    try:
        dashboard_module.check_access(bind, username, password, password_env)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None  # with this command's usage, as for a bad option
    obj.redis  # noqa: B018 - fail fast, and start the embedded server, before the web server starts
    app = dashboard_module.create_app(connections.redis_url(obj.settings), username, password)
    try:
        server = dashboard_module.make_server(app, bind, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise click.ClickException(
                f'Port {port} on {bind} is in use by another program; stop that program or '
                f'pick another port, for example --port {port % 65535 + 1}.'
            ) from None
        raise click.ClickException(
            f'Cannot listen on {bind}:{port} ({exc.strerror or exc}); check --bind, for example --bind 127.0.0.1.'
        ) from None
    click.echo(
        f'rq-dashboard on {dashboard_module.base_url(bind, port)}' + (' (basic auth)' if username else ''), err=True
    )
    server.serve_forever()
