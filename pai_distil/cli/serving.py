"""Commands that use a served model: `pai-distil evaluate --endpoint URL` and `pai-distil chat URL`.

`evaluate` runs the evaluate stage with the endpoint as its model (the same verifiers and
report as for checkpoints); `chat` is an interactive conversation with streaming, reasoning
shown apart from the answer, and a thinking switch.
"""

from __future__ import annotations

import sys

import click

from pai_distil.core.errors import UserError

THINKING = click.Choice(["default", "on", "off", "both"])


def _endpoint_options(f):
    f = click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True,
                     help="environment variable holding the endpoint's token (never the token itself)")(f)
    return click.option("--model", "-m", help="served model name (default: the first of /v1/models)")(f)


@click.command("evaluate")
@click.option("--endpoint", "url", required=True, help="base URL of the served model (…/v1, or an EAS endpoint)")
@_endpoint_options
@click.option("--thinking", type=THINKING, default="default", show_default=True,
              help="enable_thinking of the chat template; both: evaluate with and without")
@click.option("--problems", "problems_file", type=click.Path(exists=True),
              help="a problems file or folder (JSONL, Parquet, CSV); default: synthetic problems")
@click.option("-n", "n", type=click.IntRange(1), default=300, show_default=True, help="synthetic problems")
@click.option("--seed", type=int, default=2, show_default=True, help="seed of the synthetic problems")
@click.option("--levels", default="1,2,3", show_default=True, help="difficulty levels of the synthetic problems")
@click.option("--max-new-tokens", type=click.IntRange(1), default=512, show_default=True,
              help="longest answer per problem, in tokens")
@click.option("--concurrency", type=click.IntRange(1, 256), default=8, show_default=True, help="requests in flight")
@click.option("--name", help="label of the model in the report (default: the served model name)")
def evaluate(url, model, api_key_env, thinking, problems_file, n, seed, levels, max_new_tokens, concurrency, name):
    """Evaluate a served model on held-out problems: accuracy and output tokens, as for a checkpoint."""
    from pai_distil.core import report
    from pai_distil.run import report_tables
    from pai_distil.cloud.deploy.client import connect
    from pai_distil.run.submission import execute, prepare

    served = connect(url, model, api_key_env)
    label = name or served.model
    variants = {"default": [(label, None)], "on": [(label, True)], "off": [(label, False)],
                "both": [(f"{label}+think", True), (f"{label}+no_think", False)]}[thinking]
    endpoint = {"base_url": served.base_url, "model": served.model, "api_key_env": api_key_env,
                "concurrency": concurrency}
    config = {"models": [{"name": lbl, "endpoint": endpoint, "enable_thinking": think} for lbl, think in variants],
              "max_new_tokens": max_new_tokens}
    inputs = {}
    if problems_file:
        inputs["problems"] = problems_file
    else:
        try:
            config["problems"] = {"n": n, "seed": seed, "levels": [int(x) for x in levels.split(",") if x.strip()]}
        except ValueError:
            raise UserError(f"--levels {levels!r}: write comma-separated numbers, e.g. 1,2,3") from None
    prep = prepare("evaluate", config, inputs, where="evaluate options")
    # what answers behind a URL can change (a rolling update): always ask again
    record = execute(prep, "process", force=True)
    report_tables.render(report.load(record.output), title=f"evaluation of {served.base_url}")
    click.echo(record.output)


@click.command("chat")
@click.argument("url")
@_endpoint_options
@click.option("--no-thinking", is_flag=True, help="start with thinking off (toggle with /thinking)")
@click.option("--system", "system_prompt", help="a system message")
@click.option("--max-tokens", type=click.IntRange(1), default=1024, show_default=True, help="longest reply, in tokens")
@click.option("--temperature", type=click.FloatRange(0, 2), default=0.6, show_default=True,
              help="sampling temperature (0: greedy)")
@click.option("--message", "messages", multiple=True, help="send this and exit (repeatable); no interactive prompt")
def chat(url, model, api_key_env, no_thinking, system_prompt, max_tokens, temperature, messages):
    """Chat with the model served at URL. Commands: /thinking [on|off], /reset, /quit.

    `/think` and `/no_think` inside a message are passed to the model, whose chat template reads them.
    """
    import openai
    from rich.console import Console

    from pai_distil.cloud.deploy.client import connect

    served = connect(url, model, api_key_env)
    client = openai.OpenAI(base_url=served.base_url, api_key=served.api_key, max_retries=2)
    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    thinking = not no_thinking
    history: list[dict] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    interactive = not messages and sys.stdin.isatty()
    err.print(f"[bold]{served.model}[/] at {served.base_url}; thinking {'on' if thinking else 'off'}; "
              "/thinking toggles, /reset forgets, /quit ends")
    lines = iter(messages) if messages else _input_lines(interactive)
    for line in lines:
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            break
        if text == "/reset":
            history = history[:1] if system_prompt else []
            err.print("[dim]conversation cleared[/]")
            continue
        if text.startswith("/thinking"):
            arg = text.split(maxsplit=1)[1:] or [""]
            thinking = {"on": True, "off": False}.get(arg[0], not thinking)
            err.print(f"[dim]thinking {'on' if thinking else 'off'}[/]")
            continue
        history.append({"role": "user", "content": text})
        answer = _stream_reply(client, served.model, history, thinking, max_tokens, temperature, out)
        history.append({"role": "assistant", "content": answer})


def _input_lines(interactive: bool):
    while True:
        try:
            line = input("you> ") if interactive else sys.stdin.readline()
        except EOFError:
            return
        if not interactive and line == "":
            return
        yield line


def _stream_reply(client, model: str, history: list[dict], thinking: bool, max_tokens: int, temperature: float,
                  out) -> str:
    """Print the reply as it streams: reasoning dimmed, then the answer; returns the answer."""
    import openai

    try:
        stream = client.chat.completions.create(
            model=model, messages=history, stream=True, max_tokens=max_tokens, temperature=temperature,
            extra_body={"chat_template_kwargs": {"enable_thinking": thinking}})
        answer, in_reasoning = [], False
        for chunk in stream:
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            reasoning = getattr(delta, "reasoning_content", None) or (delta.model_extra or {}).get("reasoning")
            if reasoning:
                if not in_reasoning:
                    out.print("[dim italic]thinking:[/] ", end="")
                    in_reasoning = True
                out.print(reasoning, style="dim italic", end="", markup=False)
            if delta.content:
                if in_reasoning:
                    out.print()
                    in_reasoning = False
                answer.append(delta.content)
                out.print(delta.content, end="", markup=False)
        out.print()
        return "".join(answer)
    except openai.APIStatusError as e:
        raise UserError(f"the server answered {e.status_code}: {e.message}") from None
    except openai.APIConnectionError:
        raise UserError("the connection to the server was lost") from None


COMMANDS = [evaluate, chat]
