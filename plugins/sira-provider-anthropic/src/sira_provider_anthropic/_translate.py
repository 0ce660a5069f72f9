"""Kernel (OpenAI-shaped) chat requests → Anthropic Messages API request bodies.

=================================================  ==========================================================
kernel ``ChatRequest``                             Anthropic body
=================================================  ==========================================================
``system`` / ``developer`` messages                top-level ``system``: their text blocks, in order
consecutive messages of one role                   one turn (Anthropic wants user/assistant alternation)
``image_url`` part, ``data:`` URL                  ``image`` block, ``base64`` source (``application/pdf``:
                                                   a ``document`` block)
``image_url`` part, http(s) URL                    ``image`` block, ``url`` source
``file`` part with ``file_data``                   ``document`` block (PDF as base64, plain text as text)
assistant ``reasoning_content`` + signature        a ``thinking`` block first in the turn
assistant ``tool_calls``                           ``tool_use`` blocks (arguments parsed: a JSON object)
``tool`` messages                                  ``tool_result`` blocks in a user turn, before its text
function ``tools``                                 ``{name, description, input_schema}``
``tool_choice`` auto / none / required / function  ``auto`` / ``none`` / ``any`` / ``tool``
``parallel_tool_calls: false``                     ``tool_choice.disable_parallel_tool_use``
``max_completion_tokens`` / ``max_tokens``         ``max_tokens`` (else the configured default)
``stop``                                           ``stop_sequences``
``user``                                           ``metadata.user_id``
``temperature``, ``top_p``                         the same
allow-listed ``extra`` fields                      the same (``thinking`` falls back to the config's)
=================================================  ==========================================================

Dropped because Anthropic has no equivalent: ``seed``, ``presence_penalty``,
``frequency_penalty``, ``logprobs``, ``top_logprobs``, ``stream_options`` (usage always streams),
an image's ``detail``. Refused (:class:`UnsupportedRequest`, a 400 for the client): ``n`` > 1,
a JSON ``response_format``, audio input, OpenAI file ids, tool call arguments that are not a JSON
object. Content parts of any other type are passed through untouched, so Anthropic-native blocks
(``document``, ``search_result``, ``cache_control`` on a text part…) reach the upstream.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from typing import Any

import msgspec
from sira_kernel.types import ChatRequest, Message

from ._config import AnthropicConfig

__all__ = ["UnsupportedRequest", "encode_request", "to_anthropic"]

_encode = msgspec.json.Encoder().encode
_decode_arguments = msgspec.json.Decoder().decode

#: Body fields this module builds itself: a pass-through field may never replace one.
_BUILT_FIELDS = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "stream",
        "tools",
        "tool_choice",
        "stop_sequences",
        "temperature",
        "top_p",
    }
)
_NO_TOOL_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


class UnsupportedRequest(ValueError):
    """The request asks for something Anthropic cannot do; ``param`` names the field at fault."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def encode_request(request: ChatRequest, *, model: str, stream: bool, config: AnthropicConfig) -> bytes:
    """The JSON body for ``POST /v1/messages``."""
    return _encode(to_anthropic(request, model=model, stream=stream, config=config))


def to_anthropic(
    request: ChatRequest, *, model: str, stream: bool, config: AnthropicConfig
) -> dict[str, Any]:
    """The Anthropic request body for ``request``, sent as ``model``. See the module docstring."""
    if request.n is not None and request.n > 1:
        raise UnsupportedRequest("Anthropic returns one choice per request: n must be 1", "n")
    _check_response_format(request.response_format)
    extra = {
        key: value
        for key, value in request.extra.items()
        if key in config.passthrough_fields and key not in _BUILT_FIELDS
    }
    system, turns = _conversation(request.messages)
    thinking = extra.pop("thinking", config.thinking)

    body: dict[str, Any] = {"model": model, "max_tokens": _max_tokens(request, config, thinking)}
    if system:
        body["system"] = system
    body["messages"] = turns
    if request.tools:
        body["tools"] = [_tool(tool, k) for k, tool in enumerate(request.tools)]
        choice = _tool_choice(request.tool_choice, request.parallel_tool_calls)
        if choice is not None:
            body["tool_choice"] = choice
    if request.stop:
        body["stop_sequences"] = [request.stop] if isinstance(request.stop, str) else list(request.stop)
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.user:
        metadata = extra.pop("metadata", None)
        body["metadata"] = {**(metadata if isinstance(metadata, dict) else {}), "user_id": request.user}
    if thinking is not None:
        body["thinking"] = thinking
    body.update(extra)
    if stream:
        body["stream"] = True
    return body


def _max_tokens(request: ChatRequest, config: AnthropicConfig, thinking: Any) -> int:
    limit = request.token_limit
    if limit is not None:
        return limit
    budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
    if isinstance(budget, int) and budget >= config.default_max_tokens:
        # Anthropic wants max_tokens above the thinking budget: leave the default for the answer.
        return budget + config.default_max_tokens
    return config.default_max_tokens


def _check_response_format(response_format: dict[str, Any] | None) -> None:
    if response_format and response_format.get("type") not in (None, "text"):
        raise UnsupportedRequest(
            "Anthropic has no JSON response_format; describe the format in the prompt or use a tool",
            "response_format",
        )


# -- messages ---------------------------------------------------------------------------------------


def _conversation(messages: Iterable[Message]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, alternating user/assistant turns)."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for number, message in enumerate(messages):
        where = f"messages[{number}]"
        role = message.role
        if role in ("system", "developer"):
            system.extend(_system_blocks(message.content, where))
            continue
        if role == "user":
            role, blocks = "user", _content_blocks(message.content, where)
        elif role == "assistant":
            blocks = _assistant_blocks(message, where)
        elif role == "tool":
            role, blocks = "user", [_tool_result(message, where)]
        else:
            raise UnsupportedRequest(f"{where}: role {role!r} is not supported by Anthropic", "messages")
        if not blocks:
            continue  # Anthropic refuses empty turns; an empty message carries nothing anyway
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        if turn["role"] == "user":
            # Anthropic wants a user turn's tool results before anything else in it.
            turn["content"].sort(key=lambda block: block.get("type") != "tool_result")
    return system, turns


def _system_blocks(content: str | list[dict[str, Any]] | None, where: str) -> list[dict[str, Any]]:
    blocks = _content_blocks(content, where)
    for block in blocks:
        if block.get("type") != "text":
            raise UnsupportedRequest(f"{where}: Anthropic system prompts take text only", "messages")
    return blocks


def _content_blocks(content: str | list[dict[str, Any]] | None, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for number, part in enumerate(content):
        block = _block(part, f"{where}.content[{number}]")
        if block is not None:
            blocks.append(block)
    return blocks


def _block(part: dict[str, Any], where: str) -> dict[str, Any] | None:
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str) or not text:
            return None  # Anthropic refuses empty text blocks
        block: dict[str, Any] = {"type": "text", "text": text}
    elif kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        block = _image(url, where)
    elif kind == "file":
        block = _document(part.get("file"), where)
    elif kind == "refusal":
        return None  # an OpenAI assistant refusal part: nothing Anthropic can take back
    elif kind == "input_audio":
        raise UnsupportedRequest(f"{where}: Anthropic does not accept audio input", "messages")
    else:
        return part  # Anthropic-native blocks (document, search_result, …) pass through as they are
    if "cache_control" in part:
        block["cache_control"] = part["cache_control"]
    return block


def _image(url: Any, where: str) -> dict[str, Any]:
    if not isinstance(url, str):
        raise UnsupportedRequest(f"{where}: image_url.url must be a string", "messages")
    if url.startswith("data:"):
        media_type, data = _data_url(url, where)
        if media_type == "application/pdf":
            return {"type": "document", "source": {"type": "base64", "media_type": media_type, "data": data}}
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise UnsupportedRequest(f"{where}: image_url must be a data: URL or an http(s) URL", "messages")


def _document(file: Any, where: str) -> dict[str, Any]:
    data_url = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(data_url, str):
        raise UnsupportedRequest(
            f"{where}: Anthropic needs the file's content (file_data), not an OpenAI file id", "messages"
        )
    media_type, data = _data_url(data_url, where)
    document: dict[str, Any] = {"type": "document"}
    if media_type == "text/plain":
        try:
            text = base64.b64decode(data, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise UnsupportedRequest(f"{where}: file_data is not base64 UTF-8 text", "messages") from None
        document["source"] = {"type": "text", "media_type": media_type, "data": text}
    else:
        document["source"] = {"type": "base64", "media_type": media_type, "data": data}
    if isinstance(file, dict) and isinstance(file.get("filename"), str):
        document["title"] = file["filename"]
    return document


def _data_url(url: str, where: str) -> tuple[str, str]:
    """(media type, base64 data) of a ``data:<type>;base64,<data>`` URL."""
    header, comma, data = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if not comma or encoding.lower() != "base64" or "/" not in media_type or not data:
        raise UnsupportedRequest(f"{where}: expected a data:<media type>;base64,<data> URL", "messages")
    return media_type.lower(), data


def _assistant_blocks(message: Message, where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if message.reasoning_content and message.reasoning_signature:
        # Anthropic verifies the signature; unsigned reasoning cannot be sent back, so it is dropped.
        blocks.append(
            {
                "type": "thinking",
                "thinking": message.reasoning_content,
                "signature": message.reasoning_signature,
            }
        )
    blocks.extend(_content_blocks(message.content, where))
    for number, call in enumerate(message.tool_calls or ()):
        blocks.append(
            {
                "type": "tool_use",
                "id": call.id,
                "name": call.function.name,
                "input": _arguments(call.function.arguments, f"{where}.tool_calls[{number}]"),
            }
        )
    return blocks


def _arguments(arguments: str, where: str) -> dict[str, Any]:
    text = arguments.strip() or "{}"
    try:
        value = _decode_arguments(text)
    except msgspec.DecodeError:
        raise UnsupportedRequest(f"{where}.function.arguments is not valid JSON", "messages") from None
    if not isinstance(value, dict):
        raise UnsupportedRequest(f"{where}.function.arguments must be a JSON object", "messages")
    return value


def _tool_result(message: Message, where: str) -> dict[str, Any]:
    if not message.tool_call_id:
        raise UnsupportedRequest(f"{where}: a tool message needs tool_call_id", "messages")
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
    content = message.content
    if isinstance(content, str):
        if content:
            result["content"] = content
    elif content:
        result["content"] = _content_blocks(content, where)
    return result


# -- tools ------------------------------------------------------------------------------------------


def _tool(tool: dict[str, Any], number: int) -> dict[str, Any]:
    function = tool.get("function")
    if tool.get("type") != "function" or not isinstance(function, dict):
        return tool  # an Anthropic-native tool (web_search_…, or already {name, input_schema})
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise UnsupportedRequest(f"tools[{number}].function.name is required", "tools")
    converted: dict[str, Any] = {"name": name}
    if function.get("description"):
        converted["description"] = function["description"]
    converted["input_schema"] = function.get("parameters") or _NO_TOOL_SCHEMA
    if "cache_control" in tool:
        converted["cache_control"] = tool["cache_control"]
    return converted


def _tool_choice(choice: str | dict[str, Any] | None, parallel: bool | None) -> dict[str, Any] | None:
    converted: dict[str, Any] | None
    if choice is None:
        converted = None
    elif choice == "auto":
        converted = {"type": "auto"}
    elif choice == "none":
        converted = {"type": "none"}
    elif choice == "required":
        converted = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise UnsupportedRequest("tool_choice.function.name is required", "tool_choice")
        converted = {"type": "tool", "name": name}
    elif isinstance(choice, dict) and choice.get("type") in ("auto", "any", "tool", "none"):
        converted = dict(choice)  # already Anthropic's shape
    else:
        raise UnsupportedRequest(
            f"tool_choice {str(choice)[:100]!r} is not supported by Anthropic", "tool_choice"
        )
    if parallel is False:
        converted = converted or {"type": "auto"}
        if converted["type"] != "none":
            converted["disable_parallel_tool_use"] = True
    return converted
