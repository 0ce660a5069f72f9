"""Talk to Sira with the official openai SDK: `make serve` in one shell, then `python openai_sdk.py`."""

from __future__ import annotations

from openai import OpenAI

client = OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="unused-when-no-master-key")

completion = client.chat.completions.create(
    model="mock-1", messages=[{"role": "user", "content": "Hello, Sira!"}]
)
print(completion.choices[0].message.content)

stream = client.chat.completions.create(
    model="mock-1",
    messages=[{"role": "user", "content": "Stream me a reply"}],
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
    if chunk.usage:
        print(f"\n[{chunk.usage.total_tokens} tokens]")
