"""``tappa-local serve`` as a real process on 127.0.0.1, driven by the official ``openai`` client.

Covers completion, chat, streaming, the continuation of the cache across chat turns, bad
requests (4xx and the server keeps serving), the stats endpoint, and the documented
concurrency: one request at a time in arrival order, never interleaved; ``--max-queue``
waiting, the rest refused with HTTP 503.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

openai = pytest.importorskip("openai", reason="the dev extra installs openai")
pytest.importorskip("fastapi", reason="the server extra installs fastapi")

from tappa_local.localmodels import TinyModel
from tappa_local.server.process import ServerProcess, serve_process

N_CTX = 1024
ALIAS = "tiny"


@pytest.fixture(scope="module")
def server(tiny_llama: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    args = [
        "--budget",
        "48",
        "--n-batch",
        "64",
        "--n-ctx",
        str(N_CTX),
        "--threads",
        "2",
        "--max-queue",
        "1",
        "--model-alias",
        ALIAS,
    ]
    with serve_process(tiny_llama.gguf_path, args, log_path=log) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Any:
    return openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=120)


def _post_raw(server: ServerProcess, path: str, body: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
    req = urllib.request.Request(
        server.url + path, data=body, headers={"content-type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), dict(e.headers)


def _long_prompt(tag: str, words: int = 120) -> str:
    # longer than the 48-token budget: every request evicts, so the cache starts over for it
    return f"{tag}: " + " ".join(f"{tag}{i % 17}" for i in range(words))


def test_models_lists_the_alias(client: Any) -> None:
    ids = [m.id for m in client.models.list().data]
    assert ids == [ALIAS]


def test_completion(client: Any) -> None:
    out = client.completions.create(model=ALIAS, prompt="def add(a, b):", max_tokens=8, temperature=0)
    assert out.object == "text_completion"
    assert out.choices[0].finish_reason in ("length", "stop")
    assert out.usage.prompt_tokens > 0 and 0 < out.usage.completion_tokens
    chunks = list(
        client.completions.create(model=ALIAS, prompt="def add(a, b):", max_tokens=8, temperature=0, stream=True)
    )
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    assert "".join(c.choices[0].text for c in chunks) == out.choices[0].text


def _stream_chat(client: Any, messages: list[dict[str, str]], max_tokens: int) -> tuple[str, str | None]:
    pieces: list[str] = []
    finish = None
    with client.chat.completions.create(
        model=ALIAS, messages=messages, max_tokens=max_tokens, temperature=0, stream=True
    ) as stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
    return "".join(pieces), finish


def _start_over(client: Any) -> None:
    """Leave an evicted cache behind: the next unrelated prompt then starts from an empty cache.

    (After a short request nothing was evicted and llama-cpp-python reuses the common prefix
    (the BOS token), which shifts the batch boundaries, hence the evictions, of the next prompt.)
    """
    client.completions.create(model=ALIAS, prompt=_long_prompt("warm-up"), max_tokens=2, temperature=0)


def test_chat_streaming_matches_non_streaming(client: Any, server: ServerProcess) -> None:
    _start_over(client)
    messages = [{"role": "user", "content": _long_prompt("beta")}]
    whole = client.chat.completions.create(model=ALIAS, messages=messages, max_tokens=12, temperature=0)
    assert whole.choices[0].message.role == "assistant"
    # asking the same again does not extend the cached sequence (which now ends with the reply):
    # the cache starts over, so the greedy reply is the same, streamed chunk by chunk
    streamed, finish = _stream_chat(client, messages, 12)
    assert finish in ("length", "stop")
    assert streamed == whole.choices[0].message.content
    assert server.get_json("/v1/tappa/stats")["last_chat_prompt"]["reused"] == 0


def test_chat_turns_continue_the_cache(client: Any, server: ServerProcess) -> None:
    messages = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": _long_prompt("alpha")},
    ]
    first = client.chat.completions.create(model=ALIAS, messages=messages, max_tokens=12, temperature=0)
    reply = first.choices[0].message.content
    assert isinstance(reply, str)
    st = server.get_json("/v1/tappa/stats")
    assert st["last_chat_prompt"]["reused"] == 0  # a new conversation
    seen_after_first = st["kv"]["tokens_seen"]
    assert st["kv"]["n_evicted"] > 0  # the prompt is longer than the budget

    # the client sends the whole conversation back plus a new question: only the new tokens are read
    messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "And then?"}]
    _, finish = _stream_chat(client, messages, 12)
    assert finish in ("length", "stop")
    plan = server.get_json("/v1/tappa/stats")["last_chat_prompt"]
    assert plan["reused"] == seen_after_first, "the second turn did not continue the cached sequence"
    assert plan["tokens"] - plan["reused"] < 100  # the new question and the template markup only


def test_stats_endpoint_reports_bounded_kv(server: ServerProcess) -> None:
    st = server.get_json("/v1/tappa/stats")
    kv = st["kv"]
    assert kv["compressed"] is True and st["model"] == ALIAS
    assert kv["n_ctx"] == N_CTX and kv["limit"] == N_CTX
    assert 0 < kv["kv_bytes"] < kv["full_kv_bytes"]
    assert len(kv["layers"]) == 4
    for layer in kv["layers"]:
        assert layer["budget"] == 48 and layer["used"] <= layer["capacity"]
    assert kv["kv_mib"] == pytest.approx(kv["kv_bytes"] / 2**20)


def test_bad_requests_get_4xx_and_the_server_keeps_serving(client: Any, server: ServerProcess) -> None:
    status, body, _ = _post_raw(server, "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}')
    assert status == 400 and body["error"]["type"] == "invalid_request_error" and "JSON" in body["error"]["message"]

    status, body, _ = _post_raw(server, "/v1/chat/completions", b'{"messages": "not a list"}')
    assert status == 400 and body["error"]["param"] == "messages"

    status, body, _ = _post_raw(server, "/v1/completions", b"[1, 2]")
    assert status == 400

    status, body, _ = _post_raw(server, "/v1/embeddings", b'{"input": "x"}')
    assert status == 404  # not served: the model is loaded for generation only

    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert nf.value.status_code == 404 and "gpt-4o" in str(nf.value)

    too_long = "word " * (N_CTX * 2)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=ALIAS, messages=[{"role": "user", "content": too_long}], max_tokens=4)
    assert bad.value.body["code"] == "context_length_exceeded"
    # a streaming request is refused before the stream starts, not half-way through it
    with pytest.raises(openai.BadRequestError) as bad_stream:
        client.chat.completions.create(
            model=ALIAS, messages=[{"role": "user", "content": too_long}], max_tokens=4, stream=True
        )
    assert bad_stream.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as bad_completion:
        client.completions.create(model=ALIAS, prompt=too_long, max_tokens=4)
    assert bad_completion.value.body["code"] == "context_length_exceeded"

    # the chat template of this model has no "tool" role handling problems; an unknown role is the template's call
    out = client.chat.completions.create(
        model=ALIAS, messages=[{"role": "user", "content": "still there?"}], max_tokens=4
    )
    assert out.choices[0].message.role == "assistant"
    assert server.process.poll() is None


def _complete(client: Any, prompt: str, max_tokens: int) -> str:
    out = client.completions.create(model=ALIAS, prompt=prompt, max_tokens=max_tokens, temperature=0)
    return str(out.choices[0].text)


def test_concurrent_requests_are_serialised_or_refused(client: Any, server: ServerProcess) -> None:
    prompts = {"a": _long_prompt("aaa"), "b": _long_prompt("bbb")}
    _start_over(client)
    reference = {k: _complete(client, p, 48) for k, p in prompts.items()}

    results: dict[str, Any] = {}

    def run(key: str, prompt: str) -> None:
        try:
            results[key] = _complete(client, prompt, 48 if key != "long" else 400)
        except openai.APIStatusError as exc:
            results[key] = exc

    long_req = threading.Thread(target=run, args=("long", _long_prompt("zzz")))
    long_req.start()
    deadline = time.monotonic() + 60
    while not server.get_json("/v1/tappa/stats")["busy"]:
        assert time.monotonic() < deadline, "the first request never started"
        time.sleep(0.05)
    # one request is running; --max-queue 1 lets exactly one more wait
    waiting = threading.Thread(target=run, args=("a", prompts["a"]))
    waiting.start()
    while server.get_json("/v1/tappa/stats")["in_flight"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    run("b", prompts["b"])  # a third request while the queue is full
    long_req.join(120)
    waiting.join(120)

    refused = results["b"]
    assert isinstance(refused, openai.APIStatusError) and refused.status_code == 503
    assert refused.body["code"] == "server_busy" and "one at a time" in refused.body["message"]
    assert refused.response.headers.get("retry-after") == "1"
    # the queued request ran after the running one, on its own: same greedy text as when run alone
    assert isinstance(results["long"], str)
    assert results["a"] == reference["a"]
    # and the server is free again
    assert _complete(client, prompts["b"], 48) == reference["b"]
    assert server.get_json("/v1/tappa/stats")["in_flight"] == 0


def test_web_page_and_health(server: ServerProcess) -> None:
    with urllib.request.urlopen(server.url + "/", timeout=10) as r:
        html = r.read().decode()
    assert "<title>tappa-local chat</title>" in html and "v1/tappa/stats" in html
    assert server.get_json("/health")["status"] == "ok"


def test_server_log_has_no_tracebacks(server: ServerProcess) -> None:
    assert "Traceback" not in server.log(), server.log()[-3000:]


def test_serve_help_explains_flags() -> None:
    from tappa_local.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    text = sub.choices["serve"].format_help()  # type: ignore[union-attr]
    for flag in (
        "--host",
        "--port",
        "--budget",
        "--budget-mib",
        "--max-queue",
        "--api-key",
        "--allow-origin",
    ):
        assert flag in text
    assert "503" in text and "127.0.0.1" in text


def test_wrong_model_file_fails_cleanly(tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-model.gguf"
    bogus.write_bytes(b"nope")
    with (
        pytest.raises(RuntimeError, match="exited"),
        serve_process(bogus, ["--budget", "48"], log_path=tmp_path / "log.txt", startup_timeout=60),
    ):
        pass
