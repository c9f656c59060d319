"""A chat completion request as the OpenAI API defines it, checked field by field.

Every refusal is an `ApiError` naming the field (`param`) and the value that
is wrong, which the app returns as OpenAI's error object with a 4xx status, so
an OpenAI client raises its usual BadRequestError with our sentence in it.
Fields that would change the answer and that this server cannot honour (n > 1,
tools, logprobs, penalties, images) are refused, not silently ignored;
fields that change nothing here (user, metadata, store...) are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..decoding import Sampling

if TYPE_CHECKING:
    from ..data.vocabulary import Message

MAX_STOP_STRINGS = 4  # OpenAI's limit
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ApiError(Exception):
    """An OpenAI-shaped error: HTTP status, message, type, param, code."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[Message]
    sampling: Sampling
    max_tokens_given: bool  # False: the answer may use the rest of the context
    stream: bool = False
    include_usage: bool = False


def parse_chat_request(body: object, default_max_tokens: int) -> ChatRequest:
    """The checked request, or an ApiError (400) saying which field is wrong and why."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object", None)
    model = body.get("model")
    if model is None or model == "":
        raise bad("'model' is required: the name GET /v1/models lists", "model")
    if not isinstance(model, str):
        raise bad(f"'model' must be a string (the name GET /v1/models lists), not {_kind(model)}", "model")
    _refuse_unsupported(body)
    max_tokens = _optional_int(body, "max_completion_tokens", minimum=1)
    if max_tokens is None:
        max_tokens = _optional_int(body, "max_tokens", minimum=1)
    sampling = Sampling(
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, above_minimum=True),
        max_tokens=max_tokens if max_tokens is not None else default_max_tokens,
        stop=_stop_strings(body.get("stop")),
        seed=_seed(body),
    )
    stream = _optional_bool(body, "stream") or False
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad("'stream_options' must be an object such as {\"include_usage\": true}", "stream_options")
    include_usage = bool(options and options.get("include_usage") is True)
    return ChatRequest(model, _messages(body.get("messages")), sampling, max_tokens is not None, stream, include_usage)


def bad(message: str, param: str | None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _messages(value: object) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise bad("'messages' must be a non-empty list of {\"role\", \"content\"} objects", "messages")
    messages: list[Message] = []
    for index, item in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(item, dict):
            raise bad(f"{where} must be an object with 'role' and 'content'", where)
        role = item.get("role")
        if role not in ROLES:
            allowed = ", ".join(ROLES)
            hint = " (tool calls are not supported by this server)" if role in ("tool", "function") else ""
            raise bad(f"{where}.role is {role!r}; expected one of {allowed}{hint}", f"{where}.role")
        if item.get("tool_calls") or item.get("function_call"):
            raise bad(f"{where} carries tool calls, which this server does not support", f"{where}.tool_calls",
                      "unsupported_parameter")
        messages.append({"role": ROLES[role], "content": _text(item.get("content"), f"{where}.content")})
    if messages[-1]["role"] == "assistant":
        raise bad("the last message is the assistant's: end with a user message for the model to answer",
                  f"messages[{len(messages) - 1}].role")
    return messages


def _text(content: object, where: str) -> str:
    """A message's text: a string, or a list of {"type": "text"} parts (joined). Images and audio are refused."""
    text = _parts(content, where)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:  # JSON may spell a lone surrogate ("\\ud800"); the tokenizer cannot take it
        raise bad(f"{where} is not valid Unicode: {text[error.start:error.end]!r} at character {error.start} is half "
                  "of a surrogate pair", where) from None
    return text


def _parts(content: object, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        pieces: list[str] = []
        for index, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                shown = kind if kind is not None else type(part).__name__
                raise bad(f"{where}[{index}] is a {shown!r} part; this model reads text only "
                          "(parts of type 'text' with a string 'text')", f"{where}[{index}]", "unsupported_content")
            pieces.append(part["text"])
        return "".join(pieces)
    raise bad(f"{where} must be a string or a list of text parts, not {_kind(content)}", where)


def _refuse_unsupported(body: dict[str, object]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise bad(f"n={n!r}: this server returns one choice per request (n=1); send several requests instead",
                  "n", "unsupported_parameter")
    for name in ("tools", "functions"):
        if body.get(name):
            raise bad(f"'{name}' is not supported: this server does not do tool calls", name, "unsupported_parameter")
    if body.get("tool_choice") not in (None, "none"):
        raise bad("'tool_choice' is not supported: this server does not do tool calls", "tool_choice", "unsupported_parameter")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise bad("logprobs are not supported by this server", "logprobs", "unsupported_parameter")
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise bad(f"'{name}' is not supported by this server (leave it out or 0)", name, "unsupported_parameter")
    if body.get("logit_bias"):
        raise bad("'logit_bias' is not supported by this server", "logit_bias", "unsupported_parameter")
    response_format = body.get("response_format")
    if response_format is not None and not (isinstance(response_format, dict) and response_format.get("type") == "text"):
        raise bad("'response_format' other than {\"type\": \"text\"} is not supported by this server", "response_format",
                  "unsupported_parameter")
    for name in ("audio", "modalities", "prediction"):
        if body.get(name) not in (None, ["text"]):
            raise bad(f"'{name}' is not supported: this model reads and writes text only", name, "unsupported_parameter")


def _number(body: dict[str, object], name: str, default: float, minimum: float, maximum: float,
            *, above_minimum: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(f"'{name}' must be a number, not {_kind(value)}", name)
    low_ok = value > minimum if above_minimum else value >= minimum
    if not low_ok or value > maximum:
        low = f"above {minimum}" if above_minimum else f"from {minimum}"
        raise bad(f"{name}={value} is out of range: use a number {low} to {maximum}", name)
    return float(value)


def _optional_int(body: dict[str, object], name: str, *, minimum: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"'{name}' must be an integer, not {_kind(value)}", name)
    if minimum is not None and value < minimum:
        raise bad(f"{name}={value} is too small: the least is {minimum}", name)
    return value


def _seed(body: dict[str, object]) -> int | None:
    seed = _optional_int(body, "seed")
    if seed is not None and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise bad(f"seed={seed} is out of range: use an integer from {SEED_RANGE[0]} to {SEED_RANGE[1]}", "seed")
    return seed


def _optional_bool(body: dict[str, object], name: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise bad(f"'{name}' must be true or false, not {_kind(value)}", name)
    return value


def _stop_strings(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad("'stop' must be a non-empty string or a list of non-empty strings", "stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise bad(f"'stop' has {len(stops)} strings; the most is {MAX_STOP_STRINGS}", "stop")
    return tuple(stops)


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
             int: "a number", float: "a number"}
    return names.get(type(value), f"a {type(value).__name__}")
