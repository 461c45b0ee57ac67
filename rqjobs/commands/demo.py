"""`rqjobs demo`: a generated local repository documented end to end."""

from __future__ import annotations

import click

from rqjobs.commands.helpers import print_catalog, print_tree


@click.command()
@click.pass_obj
def demo(obj) -> None:
    """Document a generated local repository end to end with a real worker, offline.

    Builds (or reuses) a git repository in five languages under JOBS_DATA_DIR/demo, submits it, runs a worker
    until its job ends, and prints the catalog, the start of the overview, the mind map and the timings. Local
    repositories are allowed for this command only.
    """
    from rqjobs import demo as demo_module

    def on_step(step: str, value) -> None:
        if step == 'repository':
            click.echo(f'Repository: {value}')
        elif step == 'submitted':
            click.echo(f'Warehouse {value.id} submitted; running a worker until its job ends…')
        elif step == 'pages':
            click.echo(f'Cloned and planned: the model ({obj.settings.llm_model}) writes {value} pages, one job each…')
        elif step == 'progress' and value:
            click.echo(f'  pages {value["done"]}/{value["total"]} done, {value["failed"]} failed')

    obj.settings = demo_module.allow_local_repositories()
    outcome = demo_module.run(obj.redis, obj.settings, on_step)
    data = outcome['warehouse']
    if data['status'] != 'Completed':
        raise click.ClickException(f'Warehouse {data["id"]} ended {data["status"]}: {data["error"]}')
    result = outcome['result']
    click.echo(
        f'\nCompleted {data["organization"]}/{data["name"]} at {data["version"][:12]} '
        f'({data["classify"]}): {result.get("files")} files, {data["pages"]} pages, {data["commits"]} commits.'
    )
    click.echo('\nCatalog:')
    print_catalog(outcome['catalog'], depth=1)
    click.echo('\nOverview (start):')
    for line in outcome['overview'].splitlines()[:16]:
        click.echo(f'  {line}')
    click.echo('\nMind map:')
    print_tree(outcome['minimap'] or {'title': '(none)', 'url': '', 'nodes': []}, depth=1)
    timings = ', '.join(f'{name} {seconds:.2f} s' for name, seconds in result.get('timings', {}).items())
    click.echo(f'\nTimings: {timings}')
    if not obj.settings.redis_url:
        from rqjobs.embedded import EmbeddedRedis

        server = EmbeddedRedis(obj.settings.data_dir / 'redis')
        click.echo(
            f'\nThe embedded Redis keeps running at {server.url} for later commands on the data directory '
            f'{obj.settings.data_dir}; `rqjobs redis url` prints its URL, `rqjobs redis stop` stops it.'
        )
