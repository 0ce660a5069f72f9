from __future__ import annotations

import base64
import math
import struct
from collections.abc import Callable

import pytest
from sira_kernel.errors import ProviderRejected
from sira_kernel.providers import CallContext
from sira_kernel.types import EmbeddingRequest

from sira_provider_mock import MockProvider

pytestmark = pytest.mark.anyio


async def test_default_dimensions_and_unit_length(provider: MockProvider, ctx: CallContext) -> None:
    response = await provider.embed(EmbeddingRequest(model="mock-embed", input="hello world"), ctx)
    (item,) = response.data
    assert response.model == "mock-1-upstream"
    assert item.index == 0 and item.object == "embedding"
    assert isinstance(item.embedding, list) and len(item.embedding) == 8
    assert math.isclose(math.fsum(v * v for v in item.embedding), 1.0)
    assert response.usage is not None
    assert (response.usage.prompt_tokens, response.usage.total_tokens) == (2, 2)


async def test_deterministic_across_instances(ctx: CallContext) -> None:
    request = EmbeddingRequest(model="mock-embed", input=["alpha", "beta", "alpha"])
    one = await MockProvider(name="a").embed(request, ctx)
    two = await MockProvider(name="b").embed(request, ctx)
    vectors = [d.embedding for d in one.data]
    assert vectors == [d.embedding for d in two.data]
    assert vectors[0] == vectors[2] != vectors[1]
    # Pinned so a change of the derivation (which would break users' stored vectors) is noticed.
    assert [round(v, 6) for v in vectors[0][:2]] == [-0.373399, 0.200748]


async def test_dimensions_are_honoured(
    provider: MockProvider, make_provider: Callable[..., MockProvider], ctx: CallContext
) -> None:
    response = await provider.embed(EmbeddingRequest(model="e", input="x", dimensions=256), ctx)
    assert len(response.data[0].embedding) == 256
    configured = await make_provider(embedding_dimensions=3).embed(
        EmbeddingRequest(model="e", input="x"), ctx
    )
    assert len(configured.data[0].embedding) == 3


@pytest.mark.parametrize("dimensions", [0, 1_000_000])
async def test_dimensions_out_of_bounds(provider: MockProvider, ctx: CallContext, dimensions: int) -> None:
    with pytest.raises(ProviderRejected) as caught:
        await provider.embed(EmbeddingRequest(model="e", input="x", dimensions=dimensions), ctx)
    assert caught.value.status == 400


async def test_token_array_inputs(provider: MockProvider, ctx: CallContext) -> None:
    single = await provider.embed(EmbeddingRequest(model="e", input=[1, 2, 3]), ctx)
    several = await provider.embed(EmbeddingRequest(model="e", input=[[1, 2, 3], [4]]), ctx)
    assert len(single.data) == 1 and len(several.data) == 2
    assert single.data[0].embedding == several.data[0].embedding
    assert several.usage is not None and several.usage.prompt_tokens == 4


async def test_base64_encoding(provider: MockProvider, ctx: CallContext) -> None:
    plain = await provider.embed(EmbeddingRequest(model="e", input="x"), ctx)
    encoded = await provider.embed(EmbeddingRequest(model="e", input="x", encoding_format="base64"), ctx)
    assert isinstance(encoded.data[0].embedding, str)
    decoded = struct.unpack("<8f", base64.b64decode(encoded.data[0].embedding))
    assert decoded == pytest.approx(plain.data[0].embedding, rel=1e-6)


async def test_empty_input_is_rejected(provider: MockProvider, ctx: CallContext) -> None:
    with pytest.raises(ProviderRejected):
        await provider.embed(EmbeddingRequest(model="e", input=[]), ctx)
