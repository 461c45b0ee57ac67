"""`rqjobs` (also installed as `jobs`): the command line of rqjobs.

The root group, what the commands share and how errors end; the commands live in `rqjobs/commands/`, one module per
domain, imported only when one of them runs. Commands are thin: they parse, call one function of the `rqjobs` package
and print. Nothing here touches Redis, the database or the disk until a command runs, so `jobs --help` is instant.
"""

from __future__ import annotations

import importlib
import logging
import sys
from functools import cached_property

import click

from rqjobs import exceptions
from rqjobs.commands.helpers import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT  # noqa: F401 - the exit codes, for scripts
from rqjobs.settings import get_settings

# Each command's `module:function` under rqjobs.commands, and the first paragraph of its help: `rqjobs --help` lists
# the commands from here without importing their modules. tests/test_cli.py checks each summary against its command.
COMMANDS = {
    'cleanup': (
        'jobs:cleanup',
        ("Trim rq's registries, dead worker entries and orphan clones; nothing is removed without an option."),
    ),
    'dashboard': ('dashboard:dashboard', "Run rq-dashboard on the project's Redis, reading the JSON job payloads."),
    'db': ('db:db', 'Database schema commands.'),
    'demo': ('demo:demo', 'Document a generated local repository end to end with a real worker, offline.'),
    'enqueue': ('jobs:enqueue', "Enqueue JOB (a registered job's name) with ARGS."),
    'inspect': ('jobs:inspect_group', 'What the workers are doing and have done.'),
    'job': ('jobs:job_group', 'One job: show, cancel, stop or delete it.'),
    'llm': ('llm:llm_group', 'The language model that writes pages (LLM_BASE_URL, LLM_MODEL).'),
    'logs': ('logs:logs', 'Access logs: the Redis buffer the web side fills and `process_access_log` drains.'),
    'minimap': ('minimap:minimap_group', 'Mind maps of warehouses.'),
    'redis': ('redis:redis_group', 'The embedded Redis server (used when REDIS_URL is unset), one per data directory.'),
    'requeue': ('jobs:requeue', 'Put failed jobs back on their queues: JOB_IDS, or --all.'),
    'resume': ('jobs:resume_command', 'Let suspended workers take jobs again.'),
    'schedule': ('schedule:schedule_group', 'The periodic plan in Redis.'),
    'scheduler': (
        'schedule:scheduler_command',
        ('Register the periodic plan, then run the rq-scheduler loop (one active scheduler at a time).'),
    ),
    'stats': ('stats:stats', 'Daily statistics and snapshots of the platform (the `statistics` jobs).'),
    'status': (
        'jobs:status',
        "Show every queue's job counts, the jobs waiting for a rate limit's slot, every worker's state and every host.",
    ),
    'suspend': ('jobs:suspend_command', 'Stop all workers from taking new jobs; running jobs finish.'),
    'warehouse': ('warehouse:warehouse', 'Warehouses: git repositories documented by the warehouse jobs.'),
    'worker': (
        'worker:worker',
        "Run an rq worker on its host's queue, then QUEUES (default: all, in priority order), or a pool of them.",
    ),
}


class CliConfig:
    """What the commands share: the settings and a Redis connection, both made on first use."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    @cached_property
    def settings(self):
        return get_settings()

    @cached_property
    def redis(self):
        from rqjobs import connections

        connection = connections.get_redis(self.settings)
        if not self.quiet:
            click.echo(f'Redis: {connections.location(self.settings)}', err=True)
        return connection


class JobsGroup(click.Group):
    """The root group: loads a command's module when it runs, and turns project exceptions into one-line exit codes."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        # click's examples/complex pattern: a command's module (and what it imports) loads only when it is used.
        if name not in COMMANDS:
            return None
        module, _, function = COMMANDS[name][0].partition(':')
        return getattr(importlib.import_module(f'rqjobs.commands.{module}'), function)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # As click.Group does, from the summaries above instead of the commands, which would import every module.
        limit = formatter.width - 6 - max(map(len, COMMANDS))
        rows = [
            (name, click.Command(name, help=summary).get_short_help_str(limit))
            for name, (_, summary) in sorted(COMMANDS.items())
        ]
        with formatter.section('Commands'):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (
            exceptions.SettingsError,
            exceptions.UnknownJob,
            exceptions.UnknownQueue,
            exceptions.InvalidJobArguments,
            exceptions.InvalidJobId,
            exceptions.InvalidSubmission,
            exceptions.WarehouseNotFound,
        ) as exc:
            raise click.UsageError(str(exc), ctx=None) from None
        except exceptions.RqjobsError as exc:
            raise click.ClickException(str(exc)) from None
        except Exception as exc:
            # Looked up, not imported, so that `--help` pays for no ORM: only a command that used peewee can raise it.
            peewee = sys.modules.get('peewee')
            if peewee is not None and isinstance(exc, peewee.OperationalError | peewee.InterfaceError):
                # Connecting fails as DatabaseUnavailable already; this is the database locked or lost mid-command.
                from rqjobs.settings import redact_url

                reason = ' '.join(str(exc).split())
                raise click.ClickException(
                    f'The database at {redact_url(get_settings().database_url)} failed: '
                    f'{reason}; try the command again.'
                ) from None
            # Any command's write can meet a full Redis; redis is looked up only once a command has imported it.
            redis = sys.modules.get('redis')
            if redis is not None and isinstance(exc, redis.exceptions.OutOfMemoryError):
                from rqjobs import queues

                raise click.ClickException(queues.redis_full_message('the command could not write to it')) from None
            from rqjobs import connections  # only once something failed: --help stays instant

            lost = connections.lost(exc)
            if lost is None:
                raise
            raise click.ClickException(str(lost)) from None


@click.group(cls=JobsGroup, context_settings={'help_option_names': ['-h', '--help']})
@click.option('-v', '--verbose', count=True, help='Log more (repeat for debug output).')
@click.option('-q', '--quiet', is_flag=True, help='Log only warnings and errors.')
@click.version_option(package_name='rqjobs')
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Background jobs of the documentation platform, on RQ.

    Configuration comes from environment variables (each with its default in docs/settings.md). Without REDIS_URL,
    an embedded Redis server is started under JOBS_DATA_DIR (./var by default): one per data directory, shared by
    every command run with that directory, and left running until `rqjobs redis stop`; `rqjobs redis url` prints
    its URL.

    `rqjobs` and `jobs` are the same command; type `rqjobs` in a shell, where `jobs` is a builtin.
    """
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    ctx.obj = CliConfig(quiet=quiet)


if __name__ == '__main__':
    main()
