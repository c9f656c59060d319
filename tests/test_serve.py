"""`qlora4080 serve` answered by the real openai client, against a live server on 127.0.0.1.

One server for the module, started as a user starts it:
`python -m qlora4080 serve CHECKPOINT --port P --api-key K`, over an adapter
trained for one step on the real SmolLM2-135M (a random tiny model gives the
same answer to every prompt, so answers mixed between clients would not show).
Greedy answers are compared with `chat --prompt` on the same checkpoint.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from conftest import CLI, REPO, write_recipe
from typer.testing import CliRunner

pytestmark = pytest.mark.slow  # a real 135M model served and asked ~50 questions: about two minutes on 2 cores

KEY = "test-key-123"
ANSWER_TOKENS = 5  # short greedy answers: enough to tell prompts apart; generation here runs at ~1 token/s under load
http = httpx.Client(timeout=120)  # a loaded 2-core machine can take seconds to answer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M with an adapter trained for one step: the model's own prompt-dependent answers."""
    from qlora4080 import load_recipe, train

    work = tmp_path_factory.mktemp("serve-run")
    recipe = load_recipe(write_recipe(work, "builtin:smollm2-135m-instruct",
                                      training={"max_steps": 1, "batch_size": 1, "learning_rate": 1e-4},
                                      output={"checkpoints_dir": str(work / "checkpoints"), "runs_dir": str(work / "runs")}))
    return train(recipe, run_name="tiny", live=False).checkpoint_dir


@pytest.fixture(scope="module")
def server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a live server over the tiny checkpoint; its output is shown if it fails to start."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([*CLI, "serve", str(checkpoint), "--port", str(port), "--api-key", KEY],
                                   cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"serve exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                if http.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"serve did not answer /health in 180 s:\n{log_path.read_text()}")
            time.sleep(0.3)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=600)


@pytest.fixture(scope="module")
def chat_answers(checkpoint: Path) -> dict[str, str]:
    """`chat --prompt`'s greedy answers to the 16 prompts, from the function behind that command."""
    from qlora4080.chat import answer_once
    from qlora4080.infer import load_for_chat

    model = load_for_chat(checkpoint)
    return {prompt: answer_once(model, prompt, max_new_tokens=ANSWER_TOKENS) for prompt in PROMPTS}


PROMPTS = [f"{name} is a {age}-year-old {job} from {city}." for name, age, job, city in [
    ("Ines Moreau", 29, "architect", "Lyon"), ("Tom Berg", 41, "baker", "Oslo"), ("Ana Lima", 35, "pilot", "Porto"),
    ("Raj Patel", 52, "surgeon", "Pune"), ("Mia Chen", 23, "student", "Taipei"), ("Ole Dahl", 67, "farmer", "Bergen"),
    ("Eva Novak", 38, "lawyer", "Brno"), ("Sam Okafor", 30, "nurse", "Lagos"), ("Lea Roth", 45, "chemist", "Basel"),
    ("Ivan Petrov", 58, "miner", "Perm"), ("Zoe Martin", 27, "designer", "Quebec"), ("Ali Kaya", 33, "driver", "Izmir"),
    ("Nora Berg", 49, "judge", "Malmo"), ("Leo Rossi", 22, "waiter", "Turin"), ("Yuki Sato", 61, "potter", "Kyoto"),
    ("Omar Haddad", 36, "engineer", "Amman")]]


def ask(client: openai.OpenAI, prompt: str, **options: object) -> openai.types.chat.ChatCompletion:
    settings: dict[str, object] = {"temperature": 0, "max_tokens": ANSWER_TOKENS, **options}
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": prompt}],
                                          **settings)  # type: ignore[call-overload]


def test_models_and_health(client: openai.OpenAI, server: str) -> None:
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").owned_by == "qlora4080"
    health = http.get(f"{server}/health").json()  # open without the key, for load balancers
    assert health["status"] == "ok" and health["model"] == "tiny"


def test_answer_is_chat_prompts_answer(client: openai.OpenAI, checkpoint: Path, chat_answers: dict[str, str]) -> None:
    from qlora4080.cli import app

    reply = ask(client, PROMPTS[0])
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content is not None and choice.message.content.strip() == chat_answers[PROMPTS[0]]
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.prompt_tokens > 10
    assert reply.usage.completion_tokens <= ANSWER_TOKENS
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    # The command itself prints that same answer.
    printed = CliRunner().invoke(app, ["chat", str(checkpoint), "--prompt", PROMPTS[0], "--max-new-tokens",
                                       str(ANSWER_TOKENS)])
    assert printed.exit_code == 0, printed.output
    assert chat_answers[PROMPTS[0]] in printed.output


def test_streaming_sends_openai_chunks_that_add_up_to_the_answer(client: openai.OpenAI, chat_answers: dict[str, str]) -> None:
    chunks = list(ask(client, PROMPTS[1], stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == chat_answers[PROMPTS[1]]
    finishing = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishing in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert len({c.id for c in chunks}) == 1


def test_stream_ends_with_done(server: str) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "stream": True}
    with http.stream("POST", f"{server}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in events)


def test_sixteen_concurrent_clients_each_get_their_own_answer(client: openai.OpenAI, chat_answers: dict[str, str]) -> None:
    assert len(set(chat_answers.values())) > 1, "the prompts must have different answers for mixing to show"
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        replies = list(pool.map(lambda p: ask(client, p, stream=PROMPTS.index(p) % 2 == 1), PROMPTS))
    for prompt, reply in zip(PROMPTS, replies):
        if isinstance(reply, openai.Stream):
            text = "".join(c.choices[0].delta.content or "" for c in reply if c.choices)
        else:
            text = reply.choices[0].message.content or ""
        assert text.strip() == chat_answers[prompt], prompt


def test_sampling_settings(client: openai.OpenAI, chat_answers: dict[str, str]) -> None:
    first = ask(client, PROMPTS[2], temperature=1.0, top_p=0.9, seed=7).choices[0].message.content
    again = ask(client, PROMPTS[2], temperature=1.0, top_p=0.9, seed=7).choices[0].message.content
    assert first == again  # the same seed draws the same answer
    greedy = ask(client, PROMPTS[2], max_tokens=ANSWER_TOKENS).choices[0].message.content or ""
    stop = greedy.strip()[3:6]
    assert stop, greedy
    cut = ask(client, PROMPTS[2], stop=[stop]).choices[0]
    assert cut.finish_reason == "stop"
    assert cut.message.content == greedy[: greedy.index(stop)]
    short = ask(client, PROMPTS[2], max_tokens=2).choices[0]
    assert short.finish_reason == "length"


def error_of(call: object) -> dict[str, object]:
    assert isinstance(call, openai.APIStatusError)
    body = call.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


@pytest.mark.parametrize(("options", "param", "words"), [
    ({"temperature": 5}, "temperature", "temperature=5 is out of range"),
    ({"top_p": 0}, "top_p", "top_p=0"),
    ({"max_tokens": 0}, "max_tokens", "max_tokens=0 is too small"),
    ({"n": 2}, "n", "one choice per request"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "the most is 4"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools", "tool calls"),
    ({"logprobs": True}, "logprobs", "logprobs"),
    ({"seed": 2**70}, "seed", "out of range"),
    ({"temperature": "hot"}, "temperature", "must be a number"),
    ({"max_tokens": 10**9}, "messages", "maximum context length is 8192 tokens"),
])
def test_bad_parameters_are_400s_naming_the_parameter(client: openai.OpenAI, options: dict[str, object], param: str,
                                                     words: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, "Hi", **options)
    error = error_of(caught.value)
    assert error["param"] == param and words in str(error["message"]), error


def test_bad_messages(client: openai.OpenAI) -> None:
    image = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "data:,"}}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": image}])  # type: ignore[misc,list-item]
    assert error_of(caught.value)["param"] == "messages[0].content[1]"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=[])
    assert error_of(caught.value)["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as caught:  # past SmolLM2's 8192-token context
        ask(client, "word " * 9000)
    error = error_of(caught.value)
    assert error["code"] == "context_length_exceeded" and "maximum context length is 8192" in str(error["message"])


def test_text_parts_read_as_text(client: openai.OpenAI, chat_answers: dict[str, str]) -> None:
    parts = [{"type": "text", "text": PROMPTS[3][:10]}, {"type": "text", "text": PROMPTS[3][10:]}]
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": parts}],  # type: ignore[misc,list-item]
                                           temperature=0, max_tokens=ANSWER_TOKENS)
    assert (reply.choices[0].message.content or "").strip() == chat_answers[PROMPTS[3]]


def test_unknown_model_and_keys(client: openai.OpenAI, server: str) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    error = error_of(caught.value)
    assert error["code"] == "model_not_found" and "'tiny'" in str(error["message"])
    stranger = openai.OpenAI(base_url=f"{server}/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        stranger.models.list()
    assert error_of(caught.value)["code"] == "invalid_api_key"
    no_header = http.post(f"{server}/v1/chat/completions", json={"model": "tiny", "messages": []})
    assert no_header.status_code == 401 and "no API key was sent" in no_header.json()["error"]["message"]


def test_bad_json_and_unknown_routes_are_openai_shaped(server: str) -> None:
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    response = http.post(f"{server}/v1/chat/completions", content=b'{"model": "tiny", "messages": [', headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    for body in (b'{"model": "tiny", "max_tokens": ' + b"9" * 5000 + b"}", b"[" * 100_000 + b"]" * 100_000):
        response = http.post(f"{server}/v1/chat/completions", content=body, headers=headers)  # digits, depth past Python's
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json", response.text[:300]
    response = http.post(f"{server}/v1/chat/completions", content=b'["a list"]', headers=headers)
    assert response.status_code == 400 and "JSON object" in response.json()["error"]["message"]
    response = http.get(f"{server}/v1/completions", headers=headers)
    assert response.status_code in (404, 405) and set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_a_client_leaving_mid_stream_frees_its_row(client: openai.OpenAI, server: str) -> None:
    """A long answer, read for two chunks, then the connection closed: the server stops decoding it at once."""
    before = http.get(f"{server}/health").json()
    stream = ask(client, PROMPTS[4], stream=True, max_tokens=400)
    for _, _chunk in zip(range(2), stream):
        pass
    stream.close()
    deadline = time.monotonic() + 20
    while (health := http.get(f"{server}/health").json())["decoding"] or health["waiting"]:
        assert time.monotonic() < deadline, health
        time.sleep(0.05)
    assert health["cancelled"] == before["cancelled"] + 1, health
    # The server goes on answering others.
    assert ask(client, "Hi", max_tokens=2).choices[0].finish_reason == "length"


def test_exposed_without_a_key_warns_before_anything_loads(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([*CLI, "serve", str(tmp_path), "--host", "0.0.0.0", "--port", str(port)],
                                capture_output=True, text=True, timeout=120, env={"COLUMNS": "300", **_env()})
    output = result.stdout + result.stderr
    assert "WITHOUT an API key" in output and "--api-key" in output
    assert result.returncode == 2 and f"port {port} on 0.0.0.0 is already in use" in output
    assert "Traceback" not in output


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_health_reports_json(server: str) -> None:
    health = json.loads(http.get(f"{server}/health").text)
    assert {"decoding", "waiting", "cancelled"} <= set(health)
