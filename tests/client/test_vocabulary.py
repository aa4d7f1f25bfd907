"""One vocabulary across commands: help on every option, the same names for the same things."""

from __future__ import annotations

import socket

import click
from click.testing import CliRunner

from pai_distil.cli import cli


def options(cmd, path=("pai-distil",)):
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from options(sub, (*path, name))
    for p in cmd.params:
        if isinstance(p, click.Option) and not p.hidden:
            yield " ".join(path), p


def test_every_option_has_help():
    bare = [f"{where} {'/'.join(p.opts)}" for where, p in options(cli) if not p.help and p.name != "help"]
    assert not bare, bare


def test_deploy_eas_speaks_gpus_and_gib_as_submit_does():
    eas = cli.commands["deploy"].commands["eas"]
    names = {o for p in eas.params for o in p.opts if not getattr(p, "hidden", False)}
    assert {"--gpus", "--memory-gib", "--cpu"} <= names and "--gpu" not in names
    assert {"--gpus", "--memory", "--cpu"} <= {o for p in cli.commands["submit"].params for o in p.opts}
    r = CliRunner().invoke(cli, ["deploy", "eas", "x", "--memory-gib", "32", "--memory", "32768", "--dry-run"])
    assert r.exit_code != 0 and "--memory-gib and --memory both size the memory" in r.stderr


def test_teacher_serve_needs_no_synthetic_flag(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for extra in ([], ["--synthetic"]):  # the flag is still accepted
            r = CliRunner().invoke(cli, ["teacher", "serve", "--host", "127.0.0.1", "--port", str(port), "--no-auth",
                                         *extra])
            assert r.exit_code != 0 and f"cannot listen on 127.0.0.1:{port}" in r.stderr, r.output
