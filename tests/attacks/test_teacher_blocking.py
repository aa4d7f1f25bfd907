"""One request must not hold a server: the synthetic teacher's parsing is linear in the prompt (a
224 KB prompt of repeated problem openings took tens of seconds, and /health waited behind it), and
the emulator answers an unsigned or oversize request from its headers, before it reads a body of a
gigabyte. Its counters answer signed requests only."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
from conftest import start_teacher
from emulator_support import start_emulator

from pai_distil.core.judging import RUBRICS

PROMPTS = ["Start with 1. " * 16_000, "Start with 1. add 1" * 12_000, "Start with 1" * 20_000]


@pytest.mark.parametrize("prompt", PROMPTS + ["Problem:\n" * 25_000])
def test_a_long_crafted_prompt_is_answered_at_once_and_health_does_not_wait(prompt):
    with start_teacher(api_key=None) as teacher:
        health: list[float] = []

        def probe():
            time.sleep(0.2)
            t = time.monotonic()
            httpx.get(teacher.base_url.removesuffix("/v1") + "/health", timeout=60)
            health.append(time.monotonic() - t)

        prober = threading.Thread(target=probe)
        prober.start()
        system = RUBRICS["rv"] if prompt.startswith("Problem") else "verbosity 3"  # the judge reads `Problem:` sections
        t = time.monotonic()
        r = httpx.post(f"{teacher.base_url}/chat/completions", timeout=60, json={
            "model": "oracle", "messages": [{"role": "system", "content": system}, {"role": "user", "content": prompt}]})
        took = time.monotonic() - t
        prober.join()
        assert r.status_code == 200, r.text
        assert took < 3 and health[0] < 1, (took, health)


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    with start_emulator(tmp_path_factory.mktemp("emu") / "data") as e:
        yield e


def _answer_to_headers(port: int, head: str) -> str:
    """Send only the headers of a request that promises a gigabyte; the server's answer, within 10 s."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.encode() + b"\r\n" + b"x" * 1024)
        return s.recv(4096).decode("latin-1")


@pytest.mark.parametrize("extra", ["", "x-acs-content-sha256: " + "0" * 64 + "\r\nAuthorization: ACS3-HMAC-SHA256 "
                                   "Credential=LTAI-emulator-test,SignedHeaders=host,Signature=00\r\n"])
def test_the_emulator_answers_a_gigabyte_body_from_its_headers(emu, extra):
    head = (f"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{emu.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {1 << 30}\r\n{extra}")
    t = time.monotonic()
    answer = _answer_to_headers(emu.port, head)
    assert answer.startswith(("HTTP/1.1 413", "HTTP/1.1 400")), answer[:200]
    assert time.monotonic() - t < 5


def test_the_emulator_counters_need_a_signature(emu):
    r = httpx.get(f"{emu.url}/_emulator/oss/counters", timeout=10)
    assert r.status_code == 403 and "AccessDenied" in r.text
    bad = httpx.get(f"{emu.url}/_emulator/oss/counters", timeout=10,
                    headers={"Date": "Mon, 07 Dec 2026 00:00:00 GMT", "Authorization": "OSS LTAI-emulator-test:AAAA"})
    assert bad.status_code == 403
    assert isinstance(emu.counters(), dict)


def test_health_answers_while_a_body_of_megabytes_is_answered():
    """The chat work runs off the event loop: /health, asked once the big request is in, answers first."""
    with start_teacher(api_key=None) as teacher:
        done: dict[str, float] = {}

        def chat():
            httpx.post(f"{teacher.base_url}/chat/completions", timeout=120, json={
                "model": "oracle", "messages": [{"role": "user", "content": "Start with 1. add 1, " * 1_000_000}]})
            done["chat"] = time.monotonic()

        worker = threading.Thread(target=chat)
        worker.start()
        while teacher.requests == 0 and worker.is_alive():  # the request reached the handler
            time.sleep(0.01)
        httpx.get(teacher.base_url.removesuffix("/v1") + "/health", timeout=120)
        done["health"] = time.monotonic()
        worker.join()
        assert done["health"] < done["chat"], done
