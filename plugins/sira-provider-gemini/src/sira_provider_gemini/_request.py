"""The kernel's OpenAI-shaped requests, translated into Gemini ``generateContent`` and embedding bodies.

Messages become ``contents`` (``assistant`` → ``model``; ``tool`` results → ``user`` turns of
``functionResponse`` parts, named after the assistant tool call they answer; consecutive turns of one
role merged, as Gemini wants roles to alternate); ``system``/``developer`` messages become
``systemInstruction``. Content parts: text, images (``data:`` URLs → ``inlineData``, ``http(s)``/``gs``
URLs → ``fileData``), ``input_audio`` and ``file`` data. Tools become ``functionDeclarations`` (with
their JSON schema rewritten by :mod:`._schema`), ``tool_choice`` becomes ``toolConfig``, and the
sampling fields become ``generationConfig``. What cannot be expressed raises :class:`TranslationError`
naming the request field, before anything is sent.
"""

from __future__ import annotations

import json
import mimetypes
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import msgspec
from sira_kernel.types import ChatRequest, EmbeddingRequest, Message

from ._config import GeminiConfig
from ._schema import SchemaError, is_empty_object, to_gemini_schema

__all__ = ["TranslationError", "embedding_texts", "encode_chat", "encode_embeddings", "is_generated_call_id"]

_encode = msgspec.json.Encoder().encode

#: Tool call ids this adapter makes up when Gemini gives none (``call_0``, ``call_1``…): Gemini never
#: saw them, so they are not sent back.
_GENERATED_ID = re.compile(r"call_[0-9]+")
_DATA_URL = re.compile(
    r"data:(?P<mime>[\w.+\-]+/[\w.+\-]+)?(?P<params>(?:;[^,;]*)*?);base64,(?P<data>.*)", re.DOTALL
)
_AUDIO_TYPES = {
    "wav": "audio/wav",
    "mp3": "audio/mp3",
    "flac": "audio/flac",
    "aac": "audio/aac",
    "ogg": "audio/ogg",
}
_NATIVE_TOOLS = frozenset({"googleSearch", "googleSearchRetrieval", "codeExecution", "urlContext"})
_NATIVE_FIELDS = ("generationConfig", "safetySettings", "toolConfig", "cachedContent")
#: ``reasoning_effort`` → ``thinkingBudget``, the budgets Google's own OpenAI-compatible endpoint uses.
THINKING_BUDGETS = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576}


class TranslationError(ValueError):
    """The request cannot be expressed in Gemini's format; ``param`` names the field at fault."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def is_generated_call_id(call_id: str | None) -> bool:
    return call_id is not None and _GENERATED_ID.fullmatch(call_id) is not None


# -- chat -------------------------------------------------------------------------------------------


def encode_chat(request: ChatRequest, config: GeminiConfig) -> bytes:
    """The ``generateContent`` (and ``streamGenerateContent``) JSON body for ``request``."""
    system, contents = _contents(request.messages, config.thought_signature_fallback)
    if not contents:
        raise TranslationError("Gemini needs at least one user or assistant message", "messages")
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    passthrough = config.passthrough_fields
    if request.tools:
        tools = _tools(request.tools, passthrough)
        if tools:
            body["tools"] = tools
            if request.tool_choice is not None:
                body["toolConfig"] = {"functionCallingConfig": _function_calling(request.tool_choice)}
    generation = _generation_config(request, config)
    if generation:
        body["generationConfig"] = generation
    if config.safety_settings:
        body["safetySettings"] = [
            {"category": s.category, "threshold": s.threshold} for s in config.safety_settings
        ]
    if passthrough:
        _merge_native(body, request.extra)
    return _encode(body)


def _contents(
    messages: Sequence[Message], fallback: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}  # tool call id -> function name, as of the message being translated

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        if not parts:
            return  # Gemini refuses empty parts; an empty message says nothing anyway
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})

    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.role
        if role in ("system", "developer"):
            system.extend({"text": text} for text in _texts(message.content, f"{where}.content") if text)
        elif role == "user":
            add("user", _user_parts(message.content, f"{where}.content"))
        elif role == "assistant":
            add("model", _assistant_parts(message, call_names, fallback, where))
        elif role in ("tool", "function"):
            add("user", [_function_response(message, call_names, where)])
        else:
            raise TranslationError(f"{where}.role {role[:40]!r} has no Gemini equivalent", f"{where}.role")
    return system, contents


def _texts(content: str | list[dict[str, Any]] | None, where: str) -> list[str]:
    """The text of a message that may only hold text (system prompts, tool results)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    texts = []
    for k, part in enumerate(content):
        kind = part.get("type")
        if kind in ("text", "refusal"):
            texts.append(str(part.get(kind, "")))
        else:
            raise TranslationError(f"{where}[{k}]: only text parts are allowed here, not {kind!r}", where)
    return texts


def _user_parts(content: str | list[dict[str, Any]] | None, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for k, part in enumerate(content):
        at = f"{where}[{k}]"
        kind = part.get("type")
        if kind == "text":
            if part.get("text"):
                parts.append({"text": str(part["text"])})
        elif kind == "image_url":
            spec = part.get("image_url")
            url = spec.get("url") if isinstance(spec, Mapping) else spec
            if not isinstance(url, str):
                raise TranslationError(f"{at}.image_url.url must be a string", at)
            parts.append(_media(url, at))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            fmt = str(audio.get("format", ""))
            if not isinstance(audio.get("data"), str) or not fmt:
                raise TranslationError(f"{at}.input_audio needs base64 data and a format", at)
            parts.append(
                {"inlineData": {"mimeType": _AUDIO_TYPES.get(fmt, f"audio/{fmt}"), "data": audio["data"]}}
            )
        elif kind == "file":
            file = part.get("file") or {}
            data = file.get("file_data")
            if not isinstance(data, str):
                raise TranslationError(
                    f"{at}.file: only inline file_data (a data: URL) can be sent to Gemini", at
                )
            parts.append(_media(data, at))
        else:
            raise TranslationError(f"{at}: content part type {str(kind)[:40]!r} has no Gemini equivalent", at)
    return parts


def _media(url: str, where: str) -> dict[str, Any]:
    """``inlineData`` for a ``data:`` URL, ``fileData`` for a URL Gemini fetches itself."""
    if url.startswith("data:"):
        match = _DATA_URL.fullmatch(url)
        if match is None or not match["mime"]:
            raise TranslationError(f"{where}: a data: URL must be base64 with a media type", where)
        return {"inlineData": {"mimeType": match["mime"], "data": match["data"].strip()}}
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https", "gs"):
        raise TranslationError(f"{where}: only data:, http(s) and gs URLs can be sent to Gemini", where)
    file: dict[str, Any] = {"fileUri": url}
    # Gemini wants the type of a URL it fetches; the extension is all there is to go on. Files
    # uploaded with the File API have none, and Gemini knows their type already.
    mime, _ = mimetypes.guess_type(urlsplit(url).path, strict=False)
    if mime is not None:
        file["mimeType"] = mime
    return {"fileData": file}


def _assistant_parts(
    message: Message, call_names: dict[str, str], fallback: str, where: str
) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"text": t} for t in _texts(message.content, f"{where}.content") if t]
    calls: list[dict[str, Any]] = []
    for k, call in enumerate(message.tool_calls or ()):
        at = f"{where}.tool_calls[{k}].function.arguments"
        function_call: dict[str, Any] = {
            "name": call.function.name,
            "args": _arguments(call.function.arguments, at),
        }
        if not is_generated_call_id(call.id):
            function_call["id"] = call.id
        call_names[call.id] = call.function.name
        calls.append({"functionCall": function_call})
    parts += calls
    # Reasoning text is never sent back (Gemini ignores thought text on input); its signature is, on the
    # first function call (or the last part), which is where Gemini put it.
    signature = message.reasoning_signature or (fallback if calls else None)
    if signature and parts:
        (calls[0] if calls else parts[-1])["thoughtSignature"] = signature
    return parts


def _arguments(arguments: str, where: str) -> dict[str, Any]:
    if not arguments.strip():
        return {}
    try:
        args = json.loads(arguments)
    except ValueError:
        raise TranslationError(f"{where} is not valid JSON", where) from None
    if not isinstance(args, dict):
        raise TranslationError(f"{where} must be a JSON object for Gemini", where)
    return args


def _function_response(message: Message, call_names: Mapping[str, str], where: str) -> dict[str, Any]:
    call_id = message.tool_call_id
    name = (call_names.get(call_id) if call_id else None) or message.name
    if not name:
        raise TranslationError(
            f"{where}: tool result for call {str(call_id)[:60]!r}, which no earlier assistant message made "
            "(Gemini needs the function's name)",
            f"{where}.tool_call_id",
        )
    text = "".join(_texts(message.content, f"{where}.content"))
    try:
        value: Any = json.loads(text)
    except ValueError:
        value = text
    # Gemini wants an object; Google's convention for anything else is {"output": value}.
    response = value if isinstance(value, dict) else {"output": value}
    answer: dict[str, Any] = {"name": name, "response": response}
    if call_id and not is_generated_call_id(call_id):
        answer["id"] = call_id
    return {"functionResponse": answer}


# -- tools, generation config, pass-through ---------------------------------------------------------


def _tools(tools: list[dict[str, Any]], passthrough: bool) -> list[dict[str, Any]]:
    declarations: list[dict[str, Any]] = []
    native: list[dict[str, Any]] = []
    for k, tool in enumerate(tools):
        where = f"tools[{k}]"
        if tool.get("type") == "function":
            function = tool.get("function") or {}
            name = function.get("name")
            if not isinstance(name, str) or not name:
                raise TranslationError(f"{where}.function.name is required", where)
            declaration: dict[str, Any] = {"name": name}
            if function.get("description"):
                declaration["description"] = str(function["description"])
            parameters = function.get("parameters")
            if isinstance(parameters, Mapping):
                try:
                    schema = to_gemini_schema(parameters)
                except SchemaError as exc:
                    raise TranslationError(f"{where}.function.parameters: {exc}", where) from None
                if not is_empty_object(schema):  # Gemini refuses an object without properties
                    declaration["parameters"] = schema
            declarations.append(declaration)
        elif passthrough and "type" not in tool and tool and set(tool) <= _NATIVE_TOOLS:
            native.append(tool)  # Gemini's own tools (googleSearch, codeExecution…), as the client wrote them
        else:
            raise TranslationError(f"{where}: Gemini takes function tools only", where)
    return ([{"functionDeclarations": declarations}] if declarations else []) + native


def _function_calling(choice: str | dict[str, Any]) -> dict[str, Any]:
    if choice == "auto":
        return {"mode": "AUTO"}
    if choice == "none":
        return {"mode": "NONE"}
    if choice == "required":
        return {"mode": "ANY"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if isinstance(name, str) and name:
            return {"mode": "ANY", "allowedFunctionNames": [name]}
    raise TranslationError("tool_choice must be auto, none, required or a named function", "tool_choice")


def _generation_config(request: ChatRequest, config: GeminiConfig) -> dict[str, Any]:
    generation: dict[str, Any] = {}
    if request.temperature is not None:
        generation["temperature"] = request.temperature
    if request.top_p is not None:
        generation["topP"] = request.top_p
    if request.token_limit is not None:
        generation["maxOutputTokens"] = request.token_limit
    if request.stop is not None:
        generation["stopSequences"] = [request.stop] if isinstance(request.stop, str) else list(request.stop)
    if request.n is not None:
        generation["candidateCount"] = request.n
    if request.seed is not None:
        generation["seed"] = request.seed
    if request.presence_penalty is not None:
        generation["presencePenalty"] = request.presence_penalty
    if request.frequency_penalty is not None:
        generation["frequencyPenalty"] = request.frequency_penalty
    if request.response_format is not None:
        generation.update(_response_format(request.response_format))
    thinking: dict[str, Any] = {}
    if config.include_thoughts:
        thinking["includeThoughts"] = True
    if config.passthrough_fields:
        extra = request.extra
        if "top_k" in extra:
            generation["topK"] = extra["top_k"]
        effort = extra.get("reasoning_effort")
        if effort is not None:
            if effort not in THINKING_BUDGETS:
                raise TranslationError(
                    f"reasoning_effort must be one of {', '.join(THINKING_BUDGETS)}", "reasoning_effort"
                )
            thinking["thinkingBudget"] = THINKING_BUDGETS[effort]
    if thinking:
        generation["thinkingConfig"] = thinking
    return generation


def _response_format(response_format: dict[str, Any]) -> dict[str, Any]:
    kind = response_format.get("type")
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema")
        if not isinstance(schema, Mapping):
            return {"responseMimeType": "application/json"}
        try:
            return {"responseMimeType": "application/json", "responseSchema": to_gemini_schema(schema)}
        except SchemaError as exc:
            raise TranslationError(f"response_format.json_schema.schema: {exc}", "response_format") from None
    raise TranslationError("response_format.type must be text, json_object or json_schema", "response_format")


def _merge_native(body: dict[str, Any], extra: Mapping[str, Any]) -> None:
    """Gemini's own request fields a client added (``extra_body`` in the OpenAI SDK) win over ours."""
    for key in _NATIVE_FIELDS:
        value = extra.get(key)
        if value is None:
            continue
        current = body.get(key)
        if isinstance(value, Mapping) and isinstance(current, dict):
            merged = {**current, **value}
            if key == "generationConfig" and isinstance(value.get("thinkingConfig"), Mapping):
                merged["thinkingConfig"] = {**current.get("thinkingConfig", {}), **value["thinkingConfig"]}
            body[key] = merged
        else:
            body[key] = value


# -- embeddings -------------------------------------------------------------------------------------


def embedding_texts(request: EmbeddingRequest) -> list[str]:
    """The texts to embed; Gemini embeds text only (no token arrays)."""
    items = [request.input] if isinstance(request.input, str) else list(request.input)
    if not items:
        raise TranslationError("input must not be empty", "input")
    for k, item in enumerate(items):
        if not isinstance(item, str):
            raise TranslationError(f"input[{k}]: Gemini embeds text only, not token arrays", "input")
        if not item:
            raise TranslationError(f"input[{k}] is empty", "input")
    return items


def encode_embeddings(
    texts: Sequence[str], request: EmbeddingRequest, *, model: str, passthrough: bool
) -> bytes:
    """A ``batchEmbedContents`` body: one request per text, all for ``model`` (``models/...``)."""
    common: dict[str, Any] = {}
    if request.dimensions is not None:
        common["outputDimensionality"] = request.dimensions
    if passthrough:
        task = request.extra.get("task_type", request.extra.get("taskType"))
        if isinstance(task, str):
            common["taskType"] = task
        title = request.extra.get("title")
        if isinstance(title, str):
            common["title"] = title
    requests = [{"model": model, "content": {"parts": [{"text": text}]}, **common} for text in texts]
    return _encode({"requests": requests})
