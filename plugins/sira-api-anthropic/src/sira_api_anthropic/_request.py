"""Anthropic Messages requests → the kernel's :class:`~sira_kernel.ChatRequest`.

The body is decoded in one typed ``msgspec`` pass straight from bytes (``tool_use.input`` is kept as
raw JSON and becomes the call's ``arguments`` without being re-encoded); a second, shallow pass
finds the top-level fields the surface does not model, which pass through in ``extra``.

Mapping (Anthropic → kernel, OpenAI-shaped):

* ``system`` (string, or text blocks joined by ``"\\n"``) → a first ``system`` message.
* user ``text`` / ``image`` / ``document`` blocks → content parts (``text``; ``image_url`` with a
  ``data:`` URL or the image's URL; ``file`` for a base64 PDF, ``text`` for a text document). A
  user message that is a single text block becomes plain string content.
* user ``tool_result`` blocks → ``tool`` messages (``tool_call_id``), placed before the rest of
  that user message as OpenAI requires. Their text blocks are joined by ``"\\n"``; ``is_error``
  prefixes ``"Error: "``; images in a result go to the user message that follows the results.
* assistant ``text`` blocks → content (concatenated: Anthropic splits one reply's text into
  blocks, around citations for example); ``tool_use`` → ``tool_calls`` with JSON-string
  arguments; ``thinking`` → ``reasoning_content`` + ``reasoning_signature``;
  ``redacted_thinking`` is dropped (no OpenAI-format upstream can take it back).
* ``tools`` (custom tools) → function tools; ``tool_choice`` auto/any/tool/none →
  ``"auto"``/``"required"``/named function/``"none"``; ``disable_parallel_tool_use`` →
  ``parallel_tool_calls: false``.
* ``max_tokens`` (required, as Anthropic requires it) → ``max_tokens``; ``stop_sequences`` →
  ``stop``; ``temperature``, ``top_p``; ``metadata.user_id`` → ``user``; ``stream``.
* ``output_config.format`` (structured outputs, ``{"type": "json_schema", "schema"}``) →
  ``response_format`` ``{"type": "json_schema", "json_schema": {"name": "output", "schema"}}``.
* ``top_k``, ``thinking``, the rest of ``output_config`` (``effort``), metadata keys other than
  ``user_id`` and every unknown top-level field → ``extra`` (passed through to providers that
  accept them; an OpenAI upstream may reject Anthropic-only ones, and says so).
* ``cache_control`` and other per-block annotations are ignored.

Errors are :class:`~sira_kernel.RequestError` (400) whose message names the field the way
Anthropic's API does (``messages.0.content.1.source.data: Field required``).
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec
from sira_kernel import ChatRequest, Message, RequestError, ToolCall, ToolFunction

__all__ = ["MessagesRequest", "decode_messages", "to_chat_request"]

# -- the wire format ---------------------------------------------------------------------------------
# Unknown keys inside these objects (cache_control, citations, ...) are ignored by msgspec.


class TextBlock(msgspec.Struct, tag_field="type", tag="text"):
    text: str


class Base64Source(msgspec.Struct, tag_field="type", tag="base64"):
    media_type: str
    data: str


class URLSource(msgspec.Struct, tag_field="type", tag="url"):
    url: str


class PlainTextSource(msgspec.Struct, tag_field="type", tag="text"):
    data: str
    media_type: str = "text/plain"


class ImageBlock(msgspec.Struct, tag_field="type", tag="image"):
    source: Base64Source | URLSource


class DocumentBlock(msgspec.Struct, tag_field="type", tag="document"):
    source: Base64Source | URLSource | PlainTextSource
    title: str | None = None


class ToolUseBlock(msgspec.Struct, tag_field="type", tag="tool_use"):
    id: str
    name: str
    input: msgspec.Raw


class ToolResultBlock(msgspec.Struct, tag_field="type", tag="tool_result"):
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock | DocumentBlock] | None = None
    is_error: bool = False


class ThinkingBlock(msgspec.Struct, tag_field="type", tag="thinking"):
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(msgspec.Struct, tag_field="type", tag="redacted_thinking"):
    data: str


ContentBlock = (
    TextBlock | ImageBlock | DocumentBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock
)


class InputMessage(msgspec.Struct):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class Tool(msgspec.Struct):
    name: str
    input_schema: dict[str, Any] | None = None
    description: str | None = None
    type: str | None = None


class ToolChoiceAuto(msgspec.Struct, tag_field="type", tag="auto"):
    disable_parallel_tool_use: bool = False


class ToolChoiceAny(msgspec.Struct, tag_field="type", tag="any"):
    disable_parallel_tool_use: bool = False


class ToolChoiceTool(msgspec.Struct, tag_field="type", tag="tool"):
    name: str
    disable_parallel_tool_use: bool = False


class ToolChoiceNone(msgspec.Struct, tag_field="type", tag="none"):
    pass


class MessagesRequest(msgspec.Struct):
    """A ``POST /v1/messages`` (or ``count_tokens``) body, as far as the surface models it."""

    model: str
    messages: list[InputMessage]
    max_tokens: int | None = None
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone | None = None
    metadata: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None


KNOWN_FIELDS = frozenset(f.encode_name for f in msgspec.structs.fields(MessagesRequest))

_decode_request = msgspec.json.Decoder(MessagesRequest).decode
_decode_fields = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_decode_any = msgspec.json.Decoder().decode
_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_INDEX = re.compile(r"\[(\d+)\]")
_MISSING = re.compile(r"Object missing required field `([^`]+)`")


# -- decoding ----------------------------------------------------------------------------------------


def _invalid(err: msgspec.ValidationError) -> RequestError:
    """A 400 naming the field at fault in Anthropic's dotted style (``messages.0.role``)."""
    text = str(err)
    match = _AT.search(text)
    path = _INDEX.sub(r".\1", match.group(1)) if match else ""
    message = _AT.sub("", text)
    missing = _MISSING.match(message)
    if missing:
        path = f"{path}.{missing.group(1)}" if path else missing.group(1)
        message = "Field required"
    if not path:
        return RequestError(message)
    return RequestError(f"{path}: {message}", param=path)


def decode_messages(body: bytes, *, count_only: bool = False) -> ChatRequest:
    """Parse, validate and translate a Messages body.

    ``count_only`` is for ``count_tokens``: ``max_tokens`` is not required and nothing passes
    through.
    """
    if not body:
        raise RequestError("the request body is empty; send a JSON object")
    try:
        fields = _decode_fields(body)
    except msgspec.ValidationError:
        raise RequestError("the request body must be a JSON object") from None
    except msgspec.DecodeError:
        raise RequestError("the request body is not valid JSON") from None
    try:
        wire = _decode_request(body)
    except msgspec.ValidationError as err:
        raise _invalid(err) from None
    if count_only:
        return to_chat_request(wire, {})
    if wire.max_tokens is None:
        raise RequestError("max_tokens: Field required", param="max_tokens")
    extra = {name: _decode_any(raw) for name, raw in fields.items() if name not in KNOWN_FIELDS}
    return to_chat_request(wire, extra)


# -- translation -------------------------------------------------------------------------------------


def _image_part(source: Base64Source | URLSource) -> dict[str, Any]:
    if isinstance(source, Base64Source):
        url = f"data:{source.media_type};base64,{source.data}"
    else:
        url = source.url
    return {"type": "image_url", "image_url": {"url": url}}


def _document_part(block: DocumentBlock, where: str) -> dict[str, Any]:
    source = block.source
    if isinstance(source, PlainTextSource):
        return {"type": "text", "text": source.data}
    if isinstance(source, Base64Source):
        return {
            "type": "file",
            "file": {
                "filename": block.title or "document.pdf",
                "file_data": f"data:{source.media_type};base64,{source.data}",
            },
        }
    raise RequestError(
        f"{where}.source: documents by URL are not supported here; send the document as base64 or text",
        param=f"{where}.source",
    )


def _tool_result(block: ToolResultBlock, where: str, images: list[dict[str, Any]]) -> Message:
    content = block.content
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        texts = []
        for j, item in enumerate(content):
            if isinstance(item, TextBlock):
                texts.append(item.text)
            elif isinstance(item, ImageBlock):
                images.append(_image_part(item.source))
            else:
                part = _document_part(item, f"{where}.content.{j}")
                if part["type"] == "text":
                    texts.append(part["text"])
                else:
                    images.append(part)
        text = "\n".join(texts)
    if block.is_error:
        text = f"Error: {text}"
    return Message(role="tool", content=text, tool_call_id=block.tool_use_id)


def _user_messages(blocks: list[ContentBlock], where: str, out: list[Message]) -> None:
    parts: list[dict[str, Any]] = []
    result_parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        if isinstance(block, TextBlock):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlock):
            parts.append(_image_part(block.source))
        elif isinstance(block, ToolResultBlock):
            out.append(_tool_result(block, f"{where}.{j}", result_parts))
        elif isinstance(block, DocumentBlock):
            parts.append(_document_part(block, f"{where}.{j}"))
        else:
            kind = type(block).__struct_config__.tag
            raise RequestError(
                f"{where}.{j}: '{kind}' blocks are only allowed in assistant messages", param=f"{where}.{j}"
            )
    parts = result_parts + parts
    if not parts:
        return
    if len(parts) == 1 and parts[0]["type"] == "text":
        out.append(Message(role="user", content=parts[0]["text"]))
    else:
        out.append(Message(role="user", content=parts))


def _assistant_message(blocks: list[ContentBlock], where: str) -> Message:
    texts: list[str] = []
    calls: list[ToolCall] = []
    reasoning: list[str] = []
    signature: str | None = None
    for j, block in enumerate(blocks):
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            arguments = bytes(block.input)
            if not arguments.startswith(b"{"):
                raise RequestError(f"{where}.{j}.input: Input should be an object", param=f"{where}.{j}.input")
            calls.append(ToolCall(id=block.id, function=ToolFunction(name=block.name, arguments=arguments.decode())))
        elif isinstance(block, ThinkingBlock):
            reasoning.append(block.thinking)
            signature = block.signature or signature
        elif isinstance(block, RedactedThinkingBlock):
            continue
        else:
            kind = type(block).__struct_config__.tag
            raise RequestError(
                f"{where}.{j}: '{kind}' blocks are only allowed in user messages", param=f"{where}.{j}"
            )
    content: str | None = "".join(texts) if texts or not calls else None
    return Message(
        role="assistant",
        content=content,
        tool_calls=calls or None,
        reasoning_content="".join(reasoning) if reasoning else None,
        reasoning_signature=signature,
    )


def _tools(tools: list[Tool]) -> list[dict[str, Any]]:
    converted = []
    for i, tool in enumerate(tools):
        if tool.type not in (None, "custom"):
            raise RequestError(
                f"tools.{i}.type: the server tool '{tool.type}' is not supported here; "
                "declare a custom tool with an input_schema",
                param=f"tools.{i}.type",
            )
        if tool.input_schema is None:
            raise RequestError(f"tools.{i}.input_schema: Field required", param=f"tools.{i}.input_schema")
        function: dict[str, Any] = {"name": tool.name}
        if tool.description is not None:
            function["description"] = tool.description
        function["parameters"] = tool.input_schema
        converted.append({"type": "function", "function": function})
    return converted


def _response_format(output_config: dict[str, Any] | None, extra: dict[str, Any]) -> dict[str, Any] | None:
    """Structured outputs: ``output_config.format`` becomes OpenAI's ``response_format``."""
    if not output_config:
        return None
    rest = {k: v for k, v in output_config.items() if k != "format"}
    if rest:
        extra["output_config"] = rest
    output_format = output_config.get("format")
    if output_format is None:
        return None
    valid = isinstance(output_format, dict) and output_format.get("type") == "json_schema"
    schema = output_format.get("schema") if valid else None
    if not isinstance(schema, dict):
        raise RequestError(
            'output_config.format: expected {"type": "json_schema", "schema": {...}}', param="output_config.format"
        )
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}


def to_chat_request(wire: MessagesRequest, extra: dict[str, Any]) -> ChatRequest:
    """Translate a decoded Messages request; ``extra`` holds the fields that pass through."""
    if not wire.messages:
        raise RequestError("messages: at least one message is required", param="messages")
    messages: list[Message] = []
    system = wire.system
    if system:
        text = system if isinstance(system, str) else "\n".join(block.text for block in system)
        messages.append(Message(role="system", content=text))
    for i, message in enumerate(wire.messages):
        content = message.content
        where = f"messages.{i}.content"
        if isinstance(content, list) and not content:
            raise RequestError(f"{where}: at least one content block is required", param=where)
        if message.role == "user":
            if isinstance(content, str):
                messages.append(Message(role="user", content=content))
            else:
                _user_messages(content, where, messages)
        elif isinstance(content, str):
            messages.append(Message(role="assistant", content=content))
        else:
            messages.append(_assistant_message(content, where))

    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    choice = wire.tool_choice
    if choice is not None:
        if isinstance(choice, ToolChoiceAuto):
            tool_choice = "auto"
        elif isinstance(choice, ToolChoiceAny):
            tool_choice = "required"
        elif isinstance(choice, ToolChoiceTool):
            tool_choice = {"type": "function", "function": {"name": choice.name}}
        else:
            tool_choice = "none"
        if not isinstance(choice, ToolChoiceNone) and choice.disable_parallel_tool_use:
            parallel_tool_calls = False

    user: str | None = None
    metadata = wire.metadata
    if metadata:
        user = metadata.get("user_id")
        if user is not None and not isinstance(user, str):
            raise RequestError("metadata.user_id: Input should be a valid string", param="metadata.user_id")
        rest = {k: v for k, v in metadata.items() if k != "user_id"}
        if rest:
            extra["metadata"] = rest
    response_format = _response_format(wire.output_config, extra)
    if wire.top_k is not None:
        extra["top_k"] = wire.top_k
    if wire.thinking is not None:
        extra["thinking"] = wire.thinking

    return ChatRequest(
        model=wire.model,
        messages=messages,
        stream=wire.stream,
        # Anthropic always reports usage; ask every provider for it.
        stream_options={"include_usage": True} if wire.stream else None,
        tools=_tools(wire.tools) if wire.tools else None,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel_tool_calls,
        response_format=response_format,
        stop=wire.stop_sequences or None,
        max_tokens=wire.max_tokens,
        temperature=wire.temperature,
        top_p=wire.top_p,
        user=user,
        extra=extra,
    )
