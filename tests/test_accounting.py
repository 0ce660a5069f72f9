"""count_chat_tokens: the TokenCounter service when there is one, else the estimate; never a failure."""

from __future__ import annotations

from sira_kernel import ChatRequest, Message
from sira_kernel.accounting import count_chat_tokens, estimate_chat_tokens

REQUEST = ChatRequest(model="m", messages=[Message("system", "be brief"), Message("user", "hello there, gateway")])


class Counter:
    def __init__(self, answer: int | None) -> None:
        self.answer = answer

    def count_text(self, model: str, text: str) -> int:
        raise NotImplementedError

    def count_chat(self, request: ChatRequest) -> int:
        if self.answer is None:
            raise RuntimeError("tokenizer crashed")
        return self.answer


def test_the_counter_counts_when_there_is_one() -> None:
    assert count_chat_tokens(Counter(123), REQUEST) == 123


def test_without_a_counter_or_when_it_fails_the_estimate_is_used() -> None:
    estimate = estimate_chat_tokens(REQUEST)
    assert estimate > 0
    assert count_chat_tokens(None, REQUEST) == estimate
    assert count_chat_tokens(Counter(None), REQUEST) == estimate
