"""A fake Google Gemini API upstream (Generative Language API): a real HTTP server on loopback, for tests.

It speaks Gemini's own wire format (camelCase JSON, ``models/{model}:method`` URLs, SSE streams whose
every ``data:`` is a whole ``GenerateContentResponse``, Google-shaped errors) on the machinery of
:class:`~sira_kernel.testing.loopback.LoopbackUpstream`: an aiohttp server on ``127.0.0.1`` in a
background thread, recorded requests, queued faults and stream counters::

    from sira_kernel.testing.fake_gemini import FakeGeminiUpstream, GeminiFault

    with FakeGeminiUpstream(api_key="AIza-test") as fake:
        fake.enqueue(GeminiFault(status=429, retry_delay="12s"))   # the next request gets a 429
        fake.replay("function_call")                               # the one after: a recorded exchange
        ...
        assert fake.requests[-1].headers["x-goog-api-key"] == "AIza-test"

Public API
----------
``FakeGeminiUpstream(*, chunk_delay=0.0, api_key=None, models=DEFAULT_MODELS, call_ids=False,
cached_tokens=0, require_thought_signatures=False)``
    ``chunk_delay`` paces streamed events; ``api_key``, when set, is demanded in ``x-goog-api-key``
    (or the ``key`` query parameter): a missing key gets Google's 403 ``PERMISSION_DENIED``, a wrong
    one its 400 ``INVALID_ARGUMENT`` with reason ``API_KEY_INVALID``; ``models`` is what
    ``GET /{version}/models`` lists (names containing ``embedding`` are embedding models);
    ``call_ids`` adds an ``id`` to every ``functionCall`` (the API leaves it out by default);
    ``cached_tokens`` is reported as ``cachedContentTokenCount``; ``require_thought_signatures``
    rejects, like Gemini 3, a history whose function-call turn has no ``thoughtSignature``.

    The loopback test API: ``start()``/``stop()`` or a ``with`` block,
    ``base_url`` (``"http://127.0.0.1:PORT"``: the version is part of each path), ``port``,
    ``requests`` (:class:`RecordedRequest`), ``open_streams``, ``aborted_streams``,
    ``dropped_streams``, ``completed_streams``, ``connections_open``, ``enqueue(*faults)``,
    ``pending_faults``, ``wait_until``/``wait_until_async`` and ``reset()``. Plus:

    - ``replay(name, **fault_fields)``: answer the next request with the checked-in fixture ``name``
      (``GeminiFault(fixture=name, ...)``); see :data:`FIXTURES` and :func:`load_fixture`.

Faults
------
``enqueue`` takes :class:`Fault` (the loopback one: ``status``, ``retry_after``, ``hang``,
``delay``, ``first_token_delay``, ``chunk_delay``, ``drop_after``, ``reset``, ``body``,
``content_type``, ``message``, ``headers``) or :class:`GeminiFault`, which adds ``google_status``,
``retry_delay`` (a ``google.rpc.RetryInfo`` detail), ``safety_block``, ``prompt_block``,
``error_after`` (an error object mid-stream) and ``fixture``. Error statuses are answered in Google's
shape: ``{"error": {"code", "message", "status", "details"}}``.

Endpoints
---------
``POST /{version}/models/{model}:generateContent``, ``:streamGenerateContent?alt=sse`` (without
``alt=sse``: a JSON array, as the real API does), ``:embedContent``, ``:batchEmbedContents``
(at most 100 requests, each naming the URL's model), ``GET /{version}/models`` (``pageSize`` /
``pageToken``). ``tunedModels/{id}`` works wherever ``models/{id}`` does. Requests are validated the
way Gemini does it where adapters tend to go wrong: unknown fields (a JSON-schema keyword such as
``additionalProperties`` in a function declaration included), an object schema with empty
``properties``, empty ``parts``, roles other than ``user``/``model``, and a function-response turn
whose number of ``functionResponse`` parts differs from the preceding turn's ``functionCall`` parts.
Calling ``generateContent`` on an embedding model or ``embedContent`` on any other is a 404.

Replies
-------
Deterministic. The text is ``"Echo: <text of the last user turn>"`` (``"Hello from the fake
upstream."`` without any), streamed one word per event. After a function-response turn it is
``"Results: name={json}; ..."``. When the request declares functions (and ``functionCallingConfig``
is not ``NONE``), a fresh user question is answered with a call to the first declaration with args
``{"location": "Paris"}``, and with two or more declarations a second call to the second one with
``{"location": "Tokyo"}`` (``allowedFunctionNames`` narrows the choice); with any ``thinkingConfig``
the first call carries ``thoughtSignature`` :data:`THOUGHT_SIGNATURE`. ``thinkingConfig.includeThoughts``
adds a ``thought: true`` part ``"Let me think about that."`` first. ``candidateCount`` gives that many
candidates (``index`` 0..n-1), ``maxOutputTokens`` cuts the reply to that many words (``MAX_TOKENS``),
``responseMimeType: application/json`` wraps the text as ``{"reply": text}``. ``usageMetadata``:
``promptTokenCount`` counts the words of every text part (system instruction included),
``candidatesTokenCount`` reply words plus function calls times the candidates, ``thoughtsTokenCount``
the thought words. Streams send ``usageMetadata`` on every event, complete on the last one, and end
without any terminator (Gemini has no ``[DONE]``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from .loopback import (
    FALLBACK_REPLY,
    THINKING_TEXT,
    Fault,
    LoopbackUpstream,
    RecordedRequest,
    body_fault,
    embedding_vector,
    fixture_files,
    split_sse,
    split_words,
    sse_event,
)

__all__ = [
    "DEFAULT_MODELS",
    "FIXTURES",
    "THOUGHT_SIGNATURE",
    "FakeGeminiUpstream",
    "Fault",
    "GeminiFault",
    "GeminiFixture",
    "RecordedRequest",
    "load_fixture",
]

DEFAULT_MODELS: tuple[str, ...] = ("gemini-2.0-flash", "gemini-2.5-flash", "gemini-2.5-pro", "text-embedding-004")
THOUGHT_TEXT = THINKING_TEXT
THOUGHT_SIGNATURE = "c2lnbmF0dXJlLWZyb20tdGhlLWZha2U="
TOOL_ARGS: tuple[dict[str, Any], ...] = ({"location": "Paris"}, {"location": "Tokyo"})
EMBEDDING_DIMENSIONS = 8
MAX_BATCH = 100

#: The checked-in exchanges under ``sira_kernel/testing/fixtures/gemini/`` (documented in its README).
FIXTURES: tuple[str, ...] = (
    "embeddings",
    "function_call",
    "invalid_api_key",
    "prompt_blocked",
    "rate_limited",
    "safety_block",
    "text",
    "thinking",
)

_GOOGLE_STATUS: dict[int, tuple[str, str]] = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: ("NOT_FOUND", "Requested entity was not found."),
    409: ("ABORTED", "The operation was aborted."),
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    499: ("CANCELLED", "The operation was cancelled."),
    500: (
        "INTERNAL",
        "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    ),
    501: ("NOT_IMPLEMENTED", "Method not implemented."),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
}

# What the API accepts. An unknown name is the classic adapter bug (snake_case, OpenAI-only keys,
# JSON-schema keywords), and Gemini answers it with a 400, so the fake does too.
_REQUEST_KEYS = frozenset(
    {
        "contents",
        "tools",
        "toolConfig",
        "safetySettings",
        "systemInstruction",
        "generationConfig",
        "cachedContent",
        "model",
    }
)
_GENERATION_KEYS = frozenset(
    {
        "stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema", "responseModalities",
        "candidateCount", "maxOutputTokens", "temperature", "topP", "topK", "seed", "presencePenalty",
        "frequencyPenalty", "responseLogprobs", "logprobs", "enableEnhancedCivicAnswers", "speechConfig",
        "thinkingConfig", "mediaResolution", "imageConfig",
    }
)  # fmt: skip
_PART_DATA_KEYS = frozenset(
    {"text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode", "codeExecutionResult"}
)
_PART_KEYS = _PART_DATA_KEYS | {"thought", "thoughtSignature", "videoMetadata", "partMetadata"}
_SCHEMA_KEYS = frozenset(
    {
        "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems", "properties",
        "required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example", "anyOf",
        "propertyOrdering", "default", "items", "minimum", "maximum",
    }
)  # fmt: skip
_TOOL_KEYS = frozenset({"functionDeclarations", "googleSearch", "googleSearchRetrieval", "codeExecution", "urlContext"})
_DECLARATION_KEYS = frozenset({"name", "description", "parameters", "parametersJsonSchema", "response", "behavior"})
_FUNCTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:\-]{0,63}")
_MODEL_PATH = re.compile(
    r"/(?P<version>v[0-9][a-z0-9]*)/(?P<model>(?:models|tunedModels)/[^/:]+):(?P<method>[A-Za-z]+)"
)


class _Invalid(Exception):
    """A request the real API would refuse with 400 INVALID_ARGUMENT; the message is Google's wording."""


# -- faults and fixtures ------------------------------------------------------------------------------


@dataclass
class GeminiFault(Fault):
    """A :class:`Fault` with Gemini's own failure modes on top. Applied after the ``Fault`` ones."""

    google_status: str | None = None
    """The ``error.status`` name for ``status`` (default: Google's name for the code, e.g. ``FAILED_PRECONDITION``
    for a 400 instead of ``INVALID_ARGUMENT``)."""
    retry_delay: str | None = None
    """Add a ``google.rpc.RetryInfo`` detail with this ``retryDelay`` (``"12s"``, ``"0.5s"``) to the error."""
    safety_block: str | None = None
    """End every candidate with this ``finishReason`` (``"SAFETY"``, ``"RECITATION"``…): non-stream with no
    content, streamed after the first word."""
    prompt_block: str | None = None
    """Refuse the prompt: no candidates, ``promptFeedback.blockReason`` set to this (``"SAFETY"``, ``"OTHER"``…)."""
    error_after: int | None = None
    """Stream: after this many events send ``data: {"error": ...}`` (code ``status`` or 500) and end the stream."""
    fixture: str | None = None
    """Answer with this checked-in exchange (see :data:`FIXTURES`): its ``stream.sse`` for a stream request,
    else its ``response.json``; an exchange with an ``error.json`` answers that error with its code."""


@dataclass(frozen=True)
class GeminiFixture:
    """One checked-in exchange: what a client sent and what Gemini answered, as raw bytes."""

    name: str
    request: Any
    """The parsed ``request.json`` (None when the exchange has none)."""
    response: bytes | None
    """``response.json``: the non-streamed answer."""
    stream: bytes | None
    """``stream.sse``: the ``streamGenerateContent?alt=sse`` body."""
    error: bytes | None
    """``error.json``: an error answer; ``status`` is its ``error.code``."""
    status: int = 200

    def events(self) -> list[bytes]:
        """The stream body cut into its SSE events (each with its blank-line terminator)."""
        return split_sse(self.stream or b"")


def load_fixture(name: str) -> GeminiFixture:
    """Read fixture ``name`` from ``sira_kernel/testing/fixtures/gemini/<name>/``."""
    if name not in FIXTURES:
        raise KeyError(f"unknown Gemini fixture {name!r}; known: {', '.join(FIXTURES)}")
    files = fixture_files("gemini", name, label="Gemini")
    request = files.get("request.json")
    error = files.get("error.json")
    status = int(msgspec.json.decode(error)["error"]["code"]) if error is not None else 200
    return GeminiFixture(
        name=name,
        request=msgspec.json.decode(request) if request is not None else None,
        response=files.get("response.json"),
        stream=files.get("stream.sse"),
        error=error,
        status=status,
    )


# -- the server ---------------------------------------------------------------------------------------


class FakeGeminiUpstream(LoopbackUpstream):
    """A real Gemini-API HTTP server on loopback, run in a background thread. See the module doc."""

    fault_type = GeminiFault

    def __init__(
        self,
        *,
        chunk_delay: float = 0.0,
        api_key: str | None = None,
        models: Sequence[str] = DEFAULT_MODELS,
        call_ids: bool = False,
        cached_tokens: int = 0,
        require_thought_signatures: bool = False,
    ) -> None:
        super().__init__(chunk_delay=chunk_delay, api_key=api_key, models=models)
        self.call_ids = call_ids
        self.cached_tokens = cached_tokens
        self.require_thought_signatures = require_thought_signatures

    def replay(self, name: str, **fault_fields: Any) -> None:
        """Answer the next request with fixture ``name`` (plus any other :class:`GeminiFault` fields)."""
        load_fixture(name)  # fail here, in the test, for an unknown name
        self.enqueue(GeminiFault(fixture=name, **fault_fields))

    # -- request handling -------------------------------------------------------------------------------

    async def handle(self, request: web.Request, body: Any, fault: Fault) -> web.StreamResponse:
        """Answer in Gemini's format (see the module doc)."""
        extra = fault if isinstance(fault, GeminiFault) else GeminiFault()
        route = _MODEL_PATH.fullmatch(request.path)
        method = route["method"] if route else ""
        is_stream = method == "streamGenerateContent"
        sse = is_stream and request.query.get("alt") == "sse"
        headers = self.fault_headers(fault)
        if fault.body is not None:
            return body_fault(fault, headers, stream=sse)
        if fault.status is not None and fault.status >= 400 and extra.error_after is None:
            return _error(fault.status, fault.message, headers, extra.google_status, extra.retry_delay)

        version = request.path.split("/")[1] if request.path.count("/") >= 1 else ""
        if request.method == "GET" and re.fullmatch(r"/v[0-9][a-z0-9]*/models/?", request.path):
            denied = self._check_key(request, headers)
            return denied if denied is not None else self._list_models(request, headers)
        if route is None or request.method != "POST":
            return _error(404, f"Unknown request URL: {request.method} {request.path}", headers)
        denied = self._check_key(request, headers)
        if denied is not None:
            return denied
        if extra.fixture is not None:
            return await self._replay(request, load_fixture(extra.fixture), fault, headers, sse=sse)
        if not isinstance(body, dict):
            return _error(400, "Invalid JSON payload received. Unexpected token.", headers)
        model = route["model"]
        embedding = "embedding" in model
        if method in ("embedContent", "batchEmbedContents"):
            if not embedding:
                return _not_supported(model, version, method, headers)
            try:
                answer = _embed(body, model, batch=method == "batchEmbedContents")
            except _Invalid as exc:
                return _error(400, str(exc), headers)
            return web.json_response(answer, headers=headers)
        if method not in ("generateContent", "streamGenerateContent"):
            return _error(404, f"Method not found: {method}", headers)
        if embedding:
            return _not_supported(model, version, method, headers)
        try:
            _validate(body, require_signatures=self.require_thought_signatures)
        except _Invalid as exc:
            return _error(400, str(exc), headers)
        self._ids += 1
        reply = _Reply.build(body, model.split("/", 1)[1], f"fake-gemini-{self._ids}", self, extra)
        if is_stream:
            events = [msgspec.json.encode(chunk) for chunk in reply.chunks()]
            if not sse:
                array = b"[" + b",\r\n".join(events) + b"]"
                return web.Response(body=array, content_type="application/json", headers=headers)
            frames = [sse_event(event, newline=b"\r\n") for event in events]
            if extra.error_after is not None:
                status = fault.status or 500
                error = _error_body(status, fault.message, extra.google_status, extra.retry_delay)
                frames = [*frames[: extra.error_after], sse_event(error, newline=b"\r\n")]
            return await self.write_sse(request, frames, fault, headers)
        return await self.write_json(request, msgspec.json.encode(reply.response()), fault, headers)

    def _check_key(self, request: web.Request, headers: dict[str, str]) -> web.Response | None:
        """None when the key is right (or none is demanded), else Google's answer to a missing/wrong key."""
        if self.api_key is None:
            return None
        given = request.headers.get("x-goog-api-key") or request.query.get("key")
        if given == self.api_key:
            return None
        if not given:
            return _error(
                403,
                "Method doesn't allow unregistered callers (callers without established identity). "
                "Please use API Key or other form of API consumer identity to call this API.",
                headers,
            )
        details = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        ]
        return _error(400, "API key not valid. Please pass a valid API key.", headers, details=details)

    def _list_models(self, request: web.Request, headers: dict[str, str]) -> web.Response:
        try:
            size = max(1, min(1000, int(request.query.get("pageSize", "50"))))
            offset = int(request.query.get("pageToken") or 0)
        except ValueError:
            return _error(400, "Invalid page token or page size.", headers)
        page = self.models[offset : offset + size]
        answer: dict[str, Any] = {"models": [_model_entry(name) for name in page]}
        if offset + size < len(self.models):
            answer["nextPageToken"] = str(offset + size)
        return web.json_response(answer, headers=headers)

    async def _replay(
        self, request: web.Request, fixture: GeminiFixture, fault: Fault, headers: dict[str, str], *, sse: bool
    ) -> web.StreamResponse:
        if fixture.error is not None:
            return web.Response(
                status=fixture.status, body=fixture.error, content_type="application/json", headers=headers
            )
        if sse:
            if fixture.stream is None:
                return _error(500, f"fixture {fixture.name!r} has no stream.sse", headers)
            return await self.write_sse(request, fixture.events(), fault, headers)
        if fixture.response is None:
            return _error(500, f"fixture {fixture.name!r} has no response.json", headers)
        return await self.write_json(request, fixture.response, fault, headers)


# -- validation ---------------------------------------------------------------------------------------


def _unknown(keys: Any, allowed: frozenset[str], where: str) -> None:
    for key in keys:
        if key not in allowed:
            raise _Invalid(f"Invalid JSON payload received. Unknown name \"{key}\" at '{where}': Cannot find field.")


def _validate_schema(schema: Any, where: str) -> None:
    if not isinstance(schema, dict):
        raise _Invalid(f"* {where}: a schema must be an object")
    _unknown(schema, _SCHEMA_KEYS, where)
    kind = str(schema.get("type", "")).upper()
    properties = schema.get("properties")
    if kind == "OBJECT" and properties is not None and not properties:
        raise _Invalid(f"* GenerateContentRequest.{where}.properties: should be non-empty for OBJECT type")
    for name, sub in (properties or {}).items():
        _validate_schema(sub, f"{where}.properties[{name}]")
    if "items" in schema:
        _validate_schema(schema["items"], f"{where}.items")
    for k, sub in enumerate(schema.get("anyOf") or ()):
        _validate_schema(sub, f"{where}.any_of[{k}]")


def _validate_part(part: Any, where: str) -> None:
    if not isinstance(part, dict):
        raise _Invalid(f"* GenerateContentRequest.{where}: a part must be an object")
    _unknown(part, _PART_KEYS, where)
    data = [k for k in part if k in _PART_DATA_KEYS]
    if len(data) != 1:
        raise _Invalid(
            f"* GenerateContentRequest.{where}.data: required oneof field 'data' must have one initialized field"
        )
    if "inlineData" in part:
        inline = part["inlineData"]
        if not isinstance(inline, dict) or not inline.get("mimeType") or not isinstance(inline.get("data"), str):
            raise _Invalid(f"* GenerateContentRequest.{where}.inline_data: mimeType and data are required")
        if not re.fullmatch(r"[A-Za-z0-9+/_\-]*={0,2}", inline["data"]):
            raise _Invalid(f"Invalid value at '{where}.inline_data.data' (TYPE_BYTES), Base64 decoding failed")
    if "fileData" in part and not (part["fileData"] or {}).get("fileUri"):
        raise _Invalid(f"* GenerateContentRequest.{where}.file_data.file_uri: a file uri is required")
    if "functionCall" in part:
        call = part["functionCall"]
        if not isinstance(call, dict) or not call.get("name") or not isinstance(call.get("args", {}), dict):
            raise _Invalid(f"* GenerateContentRequest.{where}.function_call: name is required and args an object")
    if "functionResponse" in part:
        answer = part["functionResponse"]
        if not isinstance(answer, dict) or not answer.get("name") or not isinstance(answer.get("response"), dict):
            raise _Invalid(
                f"* GenerateContentRequest.{where}.function_response: name and a response object are required"
            )


def _validate(body: dict[str, Any], *, require_signatures: bool) -> None:
    _unknown(body, _REQUEST_KEYS, "")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _Invalid("* GenerateContentRequest.contents: contents is not specified")
    for i, content in enumerate(contents):
        if not isinstance(content, dict):
            raise _Invalid(f"* GenerateContentRequest.contents[{i}]: must be an object")
        _unknown(content, frozenset({"role", "parts"}), f"contents[{i}]")
        if content.get("role", "user") not in ("user", "model"):
            raise _Invalid("Please use a valid role: user, model.")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            raise _Invalid(f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.")
        for k, part in enumerate(parts):
            _validate_part(part, f"contents[{i}].parts[{k}]")
    _validate_function_turns(contents, require_signatures)
    system = body.get("systemInstruction")
    if system is not None:
        if not isinstance(system, dict) or not system.get("parts"):
            raise _Invalid("* GenerateContentRequest.system_instruction.parts: must not be empty")
        _unknown(system, frozenset({"role", "parts"}), "system_instruction")
        for k, part in enumerate(system["parts"]):
            _validate_part(part, f"system_instruction.parts[{k}]")
    for t, tool in enumerate(body.get("tools") or ()):
        _unknown(tool, _TOOL_KEYS, f"tools[{t}]")
        for d, declaration in enumerate(tool.get("functionDeclarations") or ()):
            where = f"tools[{t}].function_declarations[{d}]"
            _unknown(declaration, _DECLARATION_KEYS, where)
            if not _FUNCTION_NAME.fullmatch(str(declaration.get("name", ""))):
                raise _Invalid(f"* GenerateContentRequest.{where}.name: Invalid function name.")
            if "parameters" in declaration:
                _validate_schema(declaration["parameters"], f"{where}.parameters")
    calling = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    if calling.get("mode", "AUTO") not in ("AUTO", "ANY", "NONE", "VALIDATED", "MODE_UNSPECIFIED"):
        raise _Invalid(f"Invalid value at 'tool_config.function_calling_config.mode' ({calling.get('mode')})")
    if calling.get("allowedFunctionNames") and calling.get("mode") != "ANY":
        raise _Invalid("* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: "
                       "allowed_function_names can only be set when mode is ANY")  # fmt: skip
    config = body.get("generationConfig") or {}
    _unknown(config, _GENERATION_KEYS, "generation_config")
    count = config.get("candidateCount", 1)
    if not isinstance(count, int) or not 1 <= count <= 8:
        raise _Invalid("* GenerateContentRequest.generation_config.candidate_count: must be between 1 and 8")
    if "responseSchema" in config:
        _validate_schema(config["responseSchema"], "generation_config.response_schema")
    for s, setting in enumerate(body.get("safetySettings") or ()):
        _unknown(setting, frozenset({"category", "threshold"}), f"safety_settings[{s}]")


def _validate_function_turns(contents: list[dict[str, Any]], require_signatures: bool) -> None:
    for i, content in enumerate(contents):
        calls = [p for p in content["parts"] if "functionCall" in p]
        if not calls or content.get("role") != "model":
            continue
        if require_signatures and "thoughtSignature" not in calls[0]:
            raise _Invalid(
                f"Function call `{calls[0]['functionCall']['name']}` in the {i + 1}. content block is missing "
                "a `thought_signature`. Learn more: https://ai.google.dev/gemini-api/docs/thought-signatures"
            )
        following = contents[i + 1] if i + 1 < len(contents) else None
        if following is None:
            continue
        answers = [p for p in following["parts"] if "functionResponse" in p]
        if following.get("role", "user") != "user" or len(answers) != len(calls):
            raise _Invalid(
                "Please ensure that the number of function response parts is equal to the number of "
                "function call parts of the function call turn."
            )


# -- replies ------------------------------------------------------------------------------------------


def _texts(content: dict[str, Any]) -> list[str]:
    return [p["text"] for p in content.get("parts") or () if isinstance(p.get("text"), str) and not p.get("thought")]


def _word_count(body: dict[str, Any]) -> int:
    contents = [*(body.get("contents") or ()), body.get("systemInstruction") or {}]
    return sum(len(text.split()) for content in contents for text in _texts(content))


@dataclass
class _Reply:
    """A deterministic answer to one generateContent request, renderable whole or as stream chunks."""

    response_id: str
    model: str
    n: int
    words: list[str]
    thought: str | None
    calls: list[dict[str, Any]]
    finish_reason: str
    block: str | None
    prompt_block: str | None
    prompt_tokens: int
    cached_tokens: int
    usage_fields: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(
        cls, body: dict[str, Any], model: str, response_id: str, fake: FakeGeminiUpstream, fault: GeminiFault
    ) -> _Reply:
        contents: list[dict[str, Any]] = body["contents"]
        config = body.get("generationConfig") or {}
        thinking = config.get("thinkingConfig")
        declarations = [d["name"] for t in body.get("tools") or () for d in t.get("functionDeclarations") or ()]
        calling = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
        allowed = calling.get("allowedFunctionNames")
        if allowed:
            declarations = [d for d in declarations if d in allowed]
        last = contents[-1]
        answers = [p["functionResponse"] for p in last["parts"] if "functionResponse" in p]
        fresh_question = last.get("role", "user") == "user" and not answers
        calls: list[dict[str, Any]] = []
        if declarations and calling.get("mode", "AUTO") != "NONE" and fresh_question:
            for k, name in enumerate(declarations[:2]):
                call: dict[str, Any] = {"name": name, "args": TOOL_ARGS[k]}
                if fake.call_ids:
                    call["id"] = f"fc-{response_id}-{k}"
                part: dict[str, Any] = {"functionCall": call}
                if k == 0 and thinking is not None:
                    part["thoughtSignature"] = THOUGHT_SIGNATURE
                calls.append(part)
        user_turns = (c for c in reversed(contents) if c.get("role", "user") == "user" and _texts(c))
        user_text = next((" ".join(_texts(c)) for c in user_turns), "")
        if answers and not _texts(last):
            text = "Results: " + "; ".join(
                f"{a['name']}={msgspec.json.encode(a['response'], order='sorted').decode()}" for a in answers
            )
        else:
            text = f"Echo: {user_text}" if user_text.strip() else FALLBACK_REPLY
        if config.get("responseMimeType") == "application/json":
            text = msgspec.json.encode({"reply": text}).decode()
        words = [] if calls else split_words(text)
        finish = "STOP"
        limit = config.get("maxOutputTokens")
        if isinstance(limit, int) and 0 < limit < len(words):
            words, finish = words[:limit], "MAX_TOKENS"
        prompt_tokens = _word_count(body)
        return cls(
            response_id=response_id,
            model=model,
            n=config.get("candidateCount", 1),
            words=words,
            thought=THOUGHT_TEXT if isinstance(thinking, dict) and thinking.get("includeThoughts") else None,
            calls=calls,
            finish_reason=fault.safety_block or finish,
            block=fault.safety_block,
            prompt_block=fault.prompt_block,
            prompt_tokens=prompt_tokens,
            cached_tokens=min(fake.cached_tokens, prompt_tokens),
        )

    def usage(self, *, final: bool = True) -> dict[str, int]:
        usage = {"promptTokenCount": self.prompt_tokens}
        if self.cached_tokens:
            usage["cachedContentTokenCount"] = self.cached_tokens
        if not final or self.prompt_block:
            usage["totalTokenCount"] = self.prompt_tokens
            return usage
        shown = self.words[:1] if self.block else self.words
        candidates = (len(shown) + len(self.calls)) * self.n
        thoughts = len(THOUGHT_TEXT.split()) * self.n if self.thought else 0
        if candidates:
            usage["candidatesTokenCount"] = candidates
        if thoughts:
            usage["thoughtsTokenCount"] = thoughts
        usage["totalTokenCount"] = self.prompt_tokens + candidates + thoughts
        return usage

    def _envelope(self, candidates: list[dict[str, Any]], *, final: bool) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "candidates": candidates,
            "usageMetadata": self.usage(final=final),
            "modelVersion": self.model,
            "responseId": self.response_id,
        }
        if self.prompt_block:
            del answer["candidates"]
            answer["promptFeedback"] = {"blockReason": self.prompt_block, "safetyRatings": _ratings(blocked=True)}
        return answer

    def _candidate(self, index: int, parts: list[dict[str, Any]], finish: str | None) -> dict[str, Any]:
        candidate: dict[str, Any] = {"index": index}
        if parts:
            candidate["content"] = {"parts": parts, "role": "model"}
        if finish is not None:
            candidate["finishReason"] = finish
        if self.block and finish is not None:
            candidate["safetyRatings"] = _ratings(blocked=True)
        return candidate

    def _pieces(self) -> list[dict[str, Any]]:
        pieces: list[dict[str, Any]] = [{"text": self.thought, "thought": True}] if self.thought else []
        words = self.words[:1] if self.block else self.words
        return pieces + [{"text": word} for word in words] + self.calls

    def response(self) -> dict[str, Any]:
        """The non-streamed ``GenerateContentResponse``."""
        if self.block:
            candidates = [self._candidate(i, [], self.finish_reason) for i in range(self.n)]
            return self._envelope(candidates, final=True)
        parts: list[dict[str, Any]] = [{"text": self.thought, "thought": True}] if self.thought else []
        if self.words:
            parts.append({"text": "".join(self.words)})
        parts += self.calls
        return self._envelope([self._candidate(i, parts, self.finish_reason) for i in range(self.n)], final=True)

    def chunks(self) -> Iterator[dict[str, Any]]:
        """The streamed responses: one part per event for every candidate, the finish on the last one.

        A safety block ends with an event of its own that has no content, as Gemini sends it.
        """
        if self.prompt_block:
            yield self._envelope([], final=True)
            return
        steps: list[tuple[list[dict[str, Any]], str | None]] = [([piece], None) for piece in self._pieces()]
        if self.block or not steps:
            steps.append(([], self.finish_reason))
        else:
            steps[-1] = (steps[-1][0], self.finish_reason)
        for k, (parts, finish) in enumerate(steps):
            candidates = [self._candidate(i, parts, finish) for i in range(self.n)]
            yield self._envelope(candidates, final=k == len(steps) - 1)


def _ratings(*, blocked: bool) -> list[dict[str, Any]]:
    ratings: list[dict[str, Any]] = [
        {"category": category, "probability": "NEGLIGIBLE"}
        for category in ("HARM_CATEGORY_SEXUALLY_EXPLICIT", "HARM_CATEGORY_HATE_SPEECH", "HARM_CATEGORY_HARASSMENT")
    ]
    dangerous: dict[str, Any] = {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "NEGLIGIBLE"}
    if blocked:
        dangerous = {**dangerous, "probability": "HIGH", "blocked": True}
    return [*ratings, dangerous]


def _embed(body: dict[str, Any], model: str, *, batch: bool) -> dict[str, Any]:
    if not batch:
        return {"embedding": {"values": _embedding(body, "")}}
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise _Invalid("* BatchEmbedContentsRequest.requests: requests is not specified")
    if len(requests) > MAX_BATCH:
        raise _Invalid(f"* BatchEmbedContentsRequest.requests: at most {MAX_BATCH} requests can be in one batch")
    for k, item in enumerate(requests):
        if not isinstance(item, dict) or item.get("model") != model:
            raise _Invalid(
                f"* BatchEmbedContentsRequest.requests[{k}].model: Model names in the requests must match the "
                f"model in the URL ({model})."
            )
    return {"embeddings": [{"values": _embedding(item, f"requests[{k}].")} for k, item in enumerate(requests)]}


def _embedding(item: dict[str, Any], where: str) -> list[float]:
    _unknown(item, frozenset({"model", "content", "taskType", "title", "outputDimensionality"}), where.rstrip("."))
    texts = _texts(item.get("content") or {})
    if not texts:
        raise _Invalid(f"* EmbedContentRequest.{where}content.parts: text is required")
    dimensions = item.get("outputDimensionality") or EMBEDDING_DIMENSIONS
    return embedding_vector(" ".join(texts), int(dimensions))


def _model_entry(name: str) -> dict[str, Any]:
    embedding = "embedding" in name
    return {
        "name": f"models/{name}",
        "version": "001",
        "displayName": name.replace("-", " ").title(),
        "description": f"The fake upstream's {name}.",
        "inputTokenLimit": 2048 if embedding else 1_048_576,
        "outputTokenLimit": 1 if embedding else 8192,
        "supportedGenerationMethods": (
            ["embedContent", "batchEmbedContents"] if embedding else ["generateContent", "countTokens"]
        ),
    }


def _not_supported(model: str, version: str, method: str, headers: dict[str, str]) -> web.Response:
    return _error(
        404,
        f"{model} is not found for API version {version}, or is not supported for {method}. "
        "Call ListModels to see the list of available models and their supported methods.",
        headers,
    )


def _error_body(
    status: int,
    message: str | None,
    google_status: str | None = None,
    retry_delay: str | None = None,
    details: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    name, default = _GOOGLE_STATUS.get(status, ("INTERNAL" if status >= 500 else "FAILED_PRECONDITION", "Error."))
    error: dict[str, Any] = {"code": status, "message": message or default, "status": google_status or name}
    details = list(details or ())
    if retry_delay is not None:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay})
    if details:
        error["details"] = details
    return {"error": error}


def _error(
    status: int,
    message: str | None,
    headers: dict[str, str],
    google_status: str | None = None,
    retry_delay: str | None = None,
    *,
    details: list[dict[str, Any]] | None = None,
) -> web.Response:
    body = _error_body(status, message, google_status, retry_delay, details)
    return web.Response(status=status, body=msgspec.json.encode(body), content_type="application/json", headers=headers)
