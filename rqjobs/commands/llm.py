"""`rqjobs llm`: the language model that writes pages."""

from __future__ import annotations

import click

from rqjobs.commands.helpers import emit, json_option


@click.group('llm')
def llm_group() -> None:
    """The language model that writes pages (LLM_BASE_URL, LLM_MODEL)."""


@llm_group.command('check')
@json_option('the answer')
@click.pass_obj
def llm_check(obj, as_json: bool) -> None:
    """Send the model server one tiny request; print the model, the latency and the tokens it counted."""
    from rqjobs.pages import model

    model.require_model(obj.settings)  # before Redis: a missing setting is the thing to fix first
    emit(model.check(obj.settings, obj.redis), as_json, _print_check)


def _print_check(result: dict) -> None:
    tokens = [result['prompt_tokens'], result['completion_tokens']]
    click.echo(f'Server: {result["base_url"]}')
    click.echo(f'Model: {result["model"]}')
    click.echo(f'Latency: {result["latency"] * 1000:.0f} ms')
    click.echo(f'Tokens: {" in, ".join("?" if count is None else str(count) for count in tokens)} out')
    click.echo(f'Answer: {" ".join(result["content"].split())[:200] or "(empty)"}')
