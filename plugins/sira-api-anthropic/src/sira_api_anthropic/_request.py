"""Anthropic Messages requests → the kernel's :class:`~sira_kernel.ChatRequest`.

The body is decoded in one typed ``msgspec`` pass straight from bytes (``tool_use.input`` is kept as
raw JSON and becomes the call's ``arguments`` without being re-encoded); a second, shallow pass
finds the top-level fields the surface does not model, which pass through in ``extra``.

Mapping (Anthropic → kernel, OpenAI-shaped):

* ``system`` (string, or text blocks joined by ``"\n"``) → a first ``system`` message.
* user ``text`` / ``image`` / ``document`` blocks → content parts (``text``; ``image_url`` with a
  ``data:`` URL or the image's URL; ``file`` for a base64 PDF, ``text`` for a text document). A
  user message that is a single text block becomes plain string content.
* user ``tool_result`` blocks → ``tool`` messages (``tool_call_id``), placed before the rest of
  that user message as OpenAI requires. Their text blocks are joined by ``"\n"``; ``is_error``
  prefixes ``"Error: "``; images in a result go to the user message that follows the results.
* assistant ``text`` blocks → content (concatenated: Anthropic splits one reply's text into
  blocks, around citations for example); ``tool_use`` → ``tool_calls`` with JSON-string
  arguments (the client's JSON, not re-encoded); ``thinking`` → ``reasoning_content`` +
  ``reasoning_signature``; ``redacted_thinking`` is dropped (the kernel has no place for it).
* custom ``tools`` → function tools; server tools (``web_search_…``, ``bash_…``) pass through as
  they are, for an Anthropic upstream. ``tool_choice`` auto/any/tool/none →
  ``"auto"``/``"required"``/named function/``"none"``; ``disable_parallel_tool_use`` →
  ``parallel_tool_calls: false``.
* ``cache_control`` on text, image and document blocks, on ``tool_result`` blocks and on tools is
  kept as a ``cache_control`` key of the part (or tool), which ``provider-anthropic`` turns back
  into Anthropic's; a system prompt or tool result carrying one stays a list of text parts. The
  plugin's ``cache_control = false`` drops them for upstreams that refuse unknown keys.
* ``max_tokens`` (required, as Anthropic requires it) → ``max_tokens``; ``stop_sequences`` →
  ``stop``; ``temperature``, ``top_p``; ``metadata.user_id`` → ``user``; ``stream``.
* ``output_config.format`` (structured outputs, ``{"type": "json_schema", "schema"}``) →
  ``response_format`` ``{"type": "json_schema", "json_schema": {"name": "output", "schema"}}``.
* ``top_k``, ``thinking``, the rest of ``output_config`` (``effort``), metadata keys other than
  ``user_id`` and every unknown top-level field → ``extra`` (passed through to providers that
  accept them; an OpenAI upstream may reject Anthropic-only ones, and says so).

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
# Unknown keys inside these objects (citations, ...) are ignored by msgspec. Tools stay plain dicts:
# Anthropic's server tools (web_search, bash...) have shapes of their own and pass through whole.


class TextBlock(msgspec.Struct, tag_field="type", tag="text"):
    text: str
    cache_control: dict[str, Any] | None = None


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
    cache_control: dict[str, Any] | None = None


class DocumentBlock(msgspec.Struct, tag_field="type", tag="document"):
    source: Base64Source | URLSource | PlainTextSource
    title: str | None = None
    cache_control: dict[str, Any] | None = None


class ToolUseBlock(msgspec.Struct, tag_field="type", tag="tool_use"):
    id: str
    name: str
    input: msgspec.Raw


class ToolResultBlock(msgspec.Struct, tag_field="type", tag="tool_result"):
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock | DocumentBlock] | None = None
    is_error: bool = False
    cache_control: dict[str, Any] | None = None


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


class ToolChoiceAuto(msgspec.Struct, tag_field="type", tag="auto"):
    disable_parallel_tool_use: bool = False


class ToolChoiceAny(msgspec.Struct, tag_field="type", tag="any"):
    disable_parallel_tool_use: bool = False


class ToolChoiceTool(msgspec.Struct, tag_field="type", tag="tool"):
    name: str
    disable_parallel_tool_use: bool = False


class ToolChoiceNone(msgspec.Struct, tag_field="type", tag="none"):
    pass


ToolChoice = ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone


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
    tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoice | None = None
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


def decode_messages(body: bytes, *, count_only: bool = False, cache_control: bool = True) -> ChatRequest:
    """Parse, validate and translate a Messages body.

    ``count_only`` is for ``count_tokens``: ``max_tokens`` is not required and nothing passes
    through. ``cache_control=False`` drops Anthropic's prompt-caching marks.
    """
    try:
        return _decode_messages(body, count_only, cache_control)
    except RecursionError:  # a JSON bomb ([[[[…]]]]): msgspec gives up at Python's recursion limit
        raise RequestError("the request body is nested too deeply") from None


def _decode_messages(body: bytes, count_only: bool, cache_control: bool) -> ChatRequest:
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
        return to_chat_request(wire, {}, cache_control=cache_control)
    if wire.max_tokens is None:
        raise RequestError("max_tokens: Field required", param="max_tokens")
    extra = {name: _decode_any(raw) for name, raw in fields.items() if name not in KNOWN_FIELDS}
    return to_chat_request(wire, extra, cache_control=cache_control)


# -- translation -------------------------------------------------------------------------------------


class _Translator:
    """One request's translation; ``cache`` says whether ``cache_control`` marks are kept."""

    __slots__ = ("cache",)

    def __init__(self, cache: bool) -> None:
        self.cache = cache

    def _mark(self, part: dict[str, Any], cache_control: dict[str, Any] | None) -> dict[str, Any]:
        if cache_control is not None and self.cache:
            part["cache_control"] = cache_control
        return part

    def text(self, block: TextBlock) -> dict[str, Any]:
        return self._mark({"type": "text", "text": block.text}, block.cache_control)

    def image(self, block: ImageBlock) -> dict[str, Any]:
        source = block.source
        url = f"data:{source.media_type};base64,{source.data}" if isinstance(source, Base64Source) else source.url
        return self._mark({"type": "image_url", "image_url": {"url": url}}, block.cache_control)

    def document(self, block: DocumentBlock, where: str) -> dict[str, Any]:
        source = block.source
        if isinstance(source, PlainTextSource):
            part: dict[str, Any] = {"type": "text", "text": source.data}
        elif isinstance(source, Base64Source):
            data_url = f"data:{source.media_type};base64,{source.data}"
            part = {"type": "file", "file": {"filename": block.title or "document.pdf", "file_data": data_url}}
        else:
            raise RequestError(
                f"{where}.source: documents by URL are not supported here; send the document as base64 or text",
                param=f"{where}.source",
            )
        return self._mark(part, block.cache_control)

    def system(self, system: str | list[TextBlock]) -> Message:
        if isinstance(system, str):
            return Message(role="system", content=system)
        if self.cache and any(block.cache_control is not None for block in system):
            return Message(role="system", content=[self.text(block) for block in system])
        return Message(role="system", content="\n".join(block.text for block in system))

    def tool_result(self, block: ToolResultBlock, where: str, attachments: list[dict[str, Any]]) -> Message:
        """A ``tool`` message; images and files in the result are added to ``attachments``."""
        content = block.content
        texts: list[dict[str, Any]] = []
        if isinstance(content, str):
            texts.append({"type": "text", "text": content})
        elif content:
            for j, item in enumerate(content):
                if isinstance(item, TextBlock):
                    texts.append(self.text(item))
                elif isinstance(item, ImageBlock):
                    attachments.append(self.image(item))
                else:
                    part = self.document(item, f"{where}.content.{j}")
                    (texts if part["type"] == "text" else attachments).append(part)
        if block.is_error:
            if texts:
                texts[0]["text"] = f"Error: {texts[0]['text']}"
            else:
                texts.append({"type": "text", "text": "Error: "})
        if texts and block.cache_control is not None and self.cache:
            texts[-1]["cache_control"] = block.cache_control
        if any("cache_control" in part for part in texts):
            return Message(role="tool", content=texts, tool_call_id=block.tool_use_id)
        return Message(role="tool", content="\n".join(part["text"] for part in texts), tool_call_id=block.tool_use_id)

    def user(self, blocks: list[ContentBlock], where: str, out: list[Message]) -> None:
        parts: list[dict[str, Any]] = []
        attachments: list[dict[str, Any]] = []
        for j, block in enumerate(blocks):
            if isinstance(block, TextBlock):
                parts.append(self.text(block))
            elif isinstance(block, ImageBlock):
                parts.append(self.image(block))
            elif isinstance(block, ToolResultBlock):
                out.append(self.tool_result(block, f"{where}.{j}", attachments))
            elif isinstance(block, DocumentBlock):
                parts.append(self.document(block, f"{where}.{j}"))
            else:
                kind = type(block).__struct_config__.tag
                raise RequestError(
                    f"{where}.{j}: '{kind}' blocks are only allowed in assistant messages", param=f"{where}.{j}"
                )
        parts = attachments + parts
        if not parts:
            return
        if len(parts) == 1 and parts[0]["type"] == "text" and "cache_control" not in parts[0]:
            out.append(Message(role="user", content=parts[0]["text"]))
        else:
            out.append(Message(role="user", content=parts))

    @staticmethod
    def assistant(blocks: list[ContentBlock], where: str) -> Message:
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
                function = ToolFunction(name=block.name, arguments=arguments.decode())
                calls.append(ToolCall(id=block.id, function=function))
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
        return Message(
            role="assistant",
            content="".join(texts) if texts or not calls else None,
            tool_calls=calls or None,
            reasoning_content="".join(reasoning) if reasoning else None,
            reasoning_signature=signature,
        )

    def tools(self, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
        converted = []
        for i, tool in enumerate(tools):
            kind = tool.get("type")
            if kind not in (None, "custom"):
                converted.append(tool)  # a server tool (web_search...): only Anthropic upstreams take it
                continue
            name, schema, description = tool.get("name"), tool.get("input_schema"), tool.get("description")
            for field, value, ok in (
                ("name", name, isinstance(name, str)),
                ("input_schema", schema, isinstance(schema, dict)),
                ("description", description, description is None or isinstance(description, str)),
            ):
                if not ok:
                    problem = "Field required" if value is None else "Input has the wrong type"
                    raise RequestError(f"tools.{i}.{field}: {problem}", param=f"tools.{i}.{field}")
            function: dict[str, Any] = {"name": name}
            if description is not None:
                function["description"] = description
            function["parameters"] = schema
            converted.append(self._mark({"type": "function", "function": function}, tool.get("cache_control")))
        return converted


def _tool_choice(choice: ToolChoice | None) -> tuple[str | dict[str, Any] | None, bool | None]:
    """OpenAI's ``tool_choice`` and ``parallel_tool_calls`` for Anthropic's ``tool_choice``."""
    if choice is None:
        return None, None
    if isinstance(choice, ToolChoiceNone):
        return "none", None
    parallel = False if choice.disable_parallel_tool_use else None
    if isinstance(choice, ToolChoiceAuto):
        return "auto", parallel
    if isinstance(choice, ToolChoiceAny):
        return "required", parallel
    return {"type": "function", "function": {"name": choice.name}}, parallel


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


def to_chat_request(wire: MessagesRequest, extra: dict[str, Any], *, cache_control: bool = True) -> ChatRequest:
    """Translate a decoded Messages request; ``extra`` holds the fields that pass through."""
    if not wire.messages:
        raise RequestError("messages: at least one message is required", param="messages")
    translate = _Translator(cache_control)
    messages: list[Message] = []
    if wire.system:
        messages.append(translate.system(wire.system))
    for i, message in enumerate(wire.messages):
        content = message.content
        where = f"messages.{i}.content"
        if isinstance(content, str):
            messages.append(Message(role=message.role, content=content))
        elif not content:
            raise RequestError(f"{where}: at least one content block is required", param=where)
        elif message.role == "user":
            translate.user(content, where, messages)
        else:
            messages.append(translate.assistant(content, where))

    tool_choice, parallel_tool_calls = _tool_choice(wire.tool_choice)
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
        tools=translate.tools(wire.tools) if wire.tools else None,
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
