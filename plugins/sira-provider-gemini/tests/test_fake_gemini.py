"""FakeGeminiUpstream itself: the parts of Gemini's behaviour the adapter tests do not reach."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import msgspec
import pytest
from sira_kernel.testing.fake_gemini import FakeGeminiUpstream, GeminiFault

KEY = "AIza-fake-test-key-0001"
HELLO = {"contents": [{"role": "user", "parts": [{"text": "hi there"}]}]}
EMPTY_OBJECT = {"functionDeclarations": [{"name": "f", "parameters": {"type": "object", "properties": {}}}]}
TWO_DATA_FIELDS = {"text": "a", "inlineData": {"mimeType": "image/png", "data": "AA=="}}


@pytest.fixture
def client() -> Iterator[tuple[FakeGeminiUpstream, httpx.Client]]:
    with (
        FakeGeminiUpstream(api_key=KEY) as fake,
        httpx.Client(base_url=fake.base_url, headers={"x-goog-api-key": KEY}) as http,
    ):
        yield fake, http


def test_stream_without_alt_sse_is_a_json_array(client: tuple[FakeGeminiUpstream, httpx.Client]) -> None:
    _, http = client
    answer = http.post("/v1beta/models/gemini-2.0-flash:streamGenerateContent", json=HELLO)
    chunks = msgspec.json.decode(answer.content)
    assert answer.headers["content-type"].startswith("application/json")
    assert [c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks] == ["Echo:", " hi", " there"]
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"


def test_embed_content_and_model_checks(client: tuple[FakeGeminiUpstream, httpx.Client]) -> None:
    _, http = client
    single = http.post(
        "/v1beta/models/text-embedding-004:embedContent",
        json={"content": {"parts": [{"text": "x"}]}, "outputDimensionality": 3},
    )
    assert len(single.json()["embedding"]["values"]) == 3
    wrong_model = http.post(
        "/v1beta/models/text-embedding-004:batchEmbedContents",
        json={"requests": [{"model": "models/other-embedding", "content": {"parts": [{"text": "x"}]}}]},
    )
    assert wrong_model.status_code == 400 and "must match the model in the URL" in wrong_model.text
    chat_model = http.post(
        "/v1beta/models/gemini-2.0-flash:embedContent", json={"content": {"parts": [{"text": "x"}]}}
    )
    assert chat_model.status_code == 404 and chat_model.json()["error"]["status"] == "NOT_FOUND"


def test_keys_and_model_list(client: tuple[FakeGeminiUpstream, httpx.Client]) -> None:
    fake, http = client
    assert httpx.get(f"{fake.base_url}/v1beta/models").status_code == 403
    assert (
        httpx.get(f"{fake.base_url}/v1beta/models", params={"key": KEY}).status_code == 200
    )  # Google allows it
    page = http.get("/v1beta/models", params={"pageSize": 2}).json()
    assert [m["name"] for m in page["models"]] == ["models/gemini-2.0-flash", "models/gemini-2.5-flash"]
    assert page["nextPageToken"] == "2"
    wrong = http.post("/v1beta/models/m:generateContent", json=HELLO, headers={"x-goog-api-key": "nope"})
    assert wrong.status_code == 400
    assert wrong.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"contents": []}, "contents is not specified"),
        ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "valid role"),
        ({"contents": [{"role": "user", "parts": []}]}, "must not be empty"),
        ({**HELLO, "generation_config": {}}, 'Unknown name "generation_config"'),
        ({**HELLO, "generationConfig": {"max_tokens": 3}}, 'Unknown name "max_tokens"'),
        (
            {**HELLO, "tools": [EMPTY_OBJECT]},
            "should be non-empty for OBJECT type",
        ),
        (
            {"contents": [*HELLO["contents"], {"role": "model", "parts": [{"functionCall": {"name": "f"}}]},
                          {"role": "user", "parts": [{"text": "no result"}]}]},
            "number of function response parts",
        ),
        ({"contents": [{"parts": [TWO_DATA_FIELDS]}]}, "oneof"),
    ],
)  # fmt: skip
def test_requests_gemini_refuses(
    client: tuple[FakeGeminiUpstream, httpx.Client], body: object, message: str
) -> None:
    _, http = client
    answer = http.post("/v1beta/models/gemini-2.0-flash:generateContent", json=body)
    assert answer.status_code == 400
    assert answer.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert message in answer.json()["error"]["message"]


def test_faults_on_the_wire(client: tuple[FakeGeminiUpstream, httpx.Client]) -> None:
    fake, http = client
    fake.enqueue(
        GeminiFault(status=400, google_status="FAILED_PRECONDITION"), GeminiFault(prompt_block="OTHER")
    )
    refused = http.post("/v1beta/models/gemini-2.0-flash:generateContent", json=HELLO)
    assert (refused.status_code, refused.json()["error"]["status"]) == (400, "FAILED_PRECONDITION")
    blocked = http.post("/v1beta/models/gemini-2.0-flash:generateContent", json=HELLO).json()
    assert "candidates" not in blocked and blocked["promptFeedback"]["blockReason"] == "OTHER"
    assert fake.pending_faults == 0
    with pytest.raises(KeyError):
        fake.replay("no-such-fixture")
