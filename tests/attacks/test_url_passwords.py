"""A password in an endpoint URL (`http://user:PASS@host/v1`) and a key where its variable's name
belongs (`api_key_env: sk-live-…`), as a careless user writes them. The password must reach the
endpoint and nothing else: not the dry run, the spec, the config, the log, the registry, `runs
show` or `runs logs`. The key is refused in one line that does not repeat it."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

from conftest import serve_asgi

from pai_distil.core import url_credentials

CLI = [sys.executable, "-m", "pai_distil"]
PASSWORD = "hunter2-Pa55word"


def cli(*args, home):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PAI_DISTIL_HOME": str(home)})


def test_a_url_password_reaches_the_endpoint_and_nothing_else(tmp_path):
    from pai_distil.synthetic.server import create_app

    app, seen = create_app(None), []

    @app.middleware("http")
    async def record(request, call_next):
        seen.append(request.headers.get("authorization", ""))
        return await call_next(request)

    home = tmp_path / "home"
    with serve_asgi(app) as url:
        base = url.replace("http://", f"http://user:{PASSWORD}@") + "/v1"
        cfg = tmp_path / "gen.yaml"
        cfg.write_text(f"problems: {{n: 2, seed: 3}}\nteacher: {{base_url: '{base}', api_key_env: null}}\n")
        dry = cli("submit", "generate", "-c", cfg, "--dry-run", home=home)
        assert dry.returncode == 0 and "user:***@" in dry.stdout, dry.stderr
        run = cli("submit", "generate", "-c", cfg, home=home)
        assert run.returncode == 0, run.stderr
    basic = "Basic " + base64.b64encode(f"user:{PASSWORD}".encode()).decode()
    assert seen and set(seen) == {basic}  # the job put the password back where it connects
    run_id = next((home / "runs").iterdir()).name
    shown = [cli("runs", "show", run_id, home=home), cli("runs", "logs", run_id, home=home)]
    assert all(p.returncode == 0 for p in shown)
    texts = [dry.stdout, dry.stderr, run.stdout, run.stderr, *(p.stdout + p.stderr for p in shown)]
    assert [t for t in texts if PASSWORD in t] == []
    files = [p for p in home.rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()]
    assert files == []  # spec.json, config.json, job.log, runs.sqlite, the output


def refused_without_repeating(tmp_path, teacher: str, key: str, *fragments: str) -> None:
    """A generate config whose `teacher` mapping holds `key` is refused in one line that never shows it."""
    cfg = tmp_path / "gen.yaml"
    cfg.write_text(f"problems: {{n: 2}}\nteacher: {teacher}\n")
    proc = cli("submit", "generate", "-c", cfg, "--dry-run", home=tmp_path / "home")
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr
    assert all(f in errors[0] for f in fragments), errors[0]
    assert key not in proc.stdout + proc.stderr


def test_a_key_given_as_api_key_env_is_refused_without_repeating_it(tmp_path):
    key = "sk-live-0123456789abcdef"
    refused_without_repeating(tmp_path, f"{{api_key_env: {key}}}", key, "teacher.api_key_env", "not the key itself")


def test_masked_urls_carry_their_password_in_a_variable_of_their_own():
    config = {"teacher": {"base_url": "https://u:p%40ss@teacher.internal/v1"}, "judge": {"base_url": "http://h/v1"}}
    masked, passwords = url_credentials.split(config)
    assert masked == {"teacher": {"base_url": "https://u:***@teacher.internal/v1"}, "judge": {"base_url": "http://h/v1"}}
    assert list(passwords.values()) == ["p%40ss"] and url_credentials.names(masked) == list(passwords)
    assert url_credentials.unmasked(masked["teacher"]["base_url"], passwords) == config["teacher"]["base_url"]
    assert url_credentials.unmasked(masked["teacher"]["base_url"], {}) == masked["teacher"]["base_url"]
    assert url_credentials.mask("GET http://a:b@h/x and https://c:d@e/") == "GET http://a:***@h/x and https://c:***@e/"


def test_a_key_in_the_query_string_is_refused_without_repeating_it(tmp_path):
    for url in ("http://127.0.0.1:9/v1?api_key=sk-q-SECRET", "http://127.0.0.1:9/v1?api-version=1&token=sk-q-SECRET"):
        refused_without_repeating(tmp_path, f"{{base_url: '{url}', api_key_env: null}}", "sk-q-SECRET",
                                  "teacher.base_url", "key in its query string")
    shown = url_credentials.mask("GET http://h/v1?api-version=1&api_key=k1 ok")
    assert shown == "GET http://h/v1?api-version=1&api_key=*** ok"
