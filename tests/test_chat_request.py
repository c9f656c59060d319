"""Requests the OpenAI API allows but no model can take are 400s naming the field, never a 500.

Parsed as the server parses them (`json.loads` of the raw body, then `parse_chat_request`),
without a model: the live server's own answers are in test_serve.py.
"""

from __future__ import annotations

import json

import pytest

from qlora4080.serve.chat_request import ApiError, parse_chat_request

USER = [{"role": "user", "content": "Hi"}]


def refused(body: object) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse_chat_request(body, 64)
    assert caught.value.status == 400
    return caught.value


def test_a_lone_surrogate_in_the_content_is_named() -> None:
    body = json.loads('{"model": "m", "messages": [{"role": "user", "content": "caf\\ud800 ok"}]}')
    error = refused(body)
    assert error.param == "messages[0].content" and "not valid Unicode" in error.message and "character 3" in error.message
    parts = json.loads('{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}')
    assert refused(parts).param == "messages[0].content"


def test_a_model_that_is_not_a_string_is_called_that() -> None:
    error = refused({"model": 5, "messages": USER})
    assert error.param == "model" and "must be a string" in error.message and "not a number" in error.message
    assert "is required" in refused({"messages": USER}).message


def test_a_tiny_temperature_is_accepted() -> None:
    assert parse_chat_request({"model": "m", "messages": USER, "temperature": 1e-300}, 64).sampling.temperature == 1e-300
