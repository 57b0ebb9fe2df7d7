"""The WebSocket generate with messages instead of a prompt: the worker
renders them with the model's chat template (ChatML for a model without
one, as the test models are) and tokenizes the result with control tokens
parsed; the same check of their shape as /v1/chat/completions."""
import pytest

import rillclient as rc
from rillclient import GREEDY, JSON, MSGPACK, Client, run, sampling

MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}]
CHATML = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def gw(module_pipelines, tiny_model):
    return module_pipelines(tiny_model)


@pytest.mark.parametrize("proto", [JSON, MSGPACK])
def test_messages_are_the_rendered_template(gw, proto):
    async def main():
        async with await Client.connect(gw.url, proto) as c:
            await c.send({"type": "generate", "id": "chat", "messages": MESSAGES, "max_tokens": 16,
                          "params": sampling(GREEDY)})
            (chat,) = await c.wait_done("chat")
            text = await c.run(CHATML, 16, sampling(GREEDY), gid="text")
        return chat, text

    chat, text = run(main())
    chat.check_order()
    assert chat.terminal["type"] == "complete", chat.terminal
    assert rc.triples(chat.tokens) == rc.triples(text.tokens) and len(chat.tokens) > 0


@pytest.mark.parametrize("bad, code, words", [
    ({"prompt": "x", "messages": MESSAGES}, "bad_request", "give one of them"),
    ({"messages": []}, "bad_request", "non-empty list"),
    ({"messages": "hello"}, "bad_request", "non-empty list"),
    ({"messages": [{"content": "no role"}]}, "bad_request", "messages[0]"),
    ({"messages": [{"role": "user", "content": 7}]}, "bad_request", "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "bad_request",
     "only text parts"),
    ({}, "bad_request", "prompt: missing"),
])
def test_bad_messages_say_what_is_wrong(gw, bad, code, words):
    async def main():
        async with await Client.connect(gw.url, MSGPACK) as c:
            await c.send({"type": "generate", "id": "bad", "max_tokens": 4, **bad})
            (g,) = await c.wait_done("bad")
        return g

    g = run(main())
    assert g.error["code"] == code and words in g.error["message"], g.terminal


def test_messages_over_the_prompt_cap_are_prompt_too_long(pipelines, tiny_model):
    p = pipelines(tiny_model, gateway_args=("--max_prompt_bytes", "64"))

    async def main():
        async with await Client.connect(p.url, JSON) as c:
            await c.send({"type": "generate", "id": "big", "max_tokens": 4,
                          "messages": [{"role": "user", "content": "x" * 100}]})
            (g,) = await c.wait_done("big")
        return g

    g = run(main())
    assert g.error["code"] == "prompt_too_long" and "messages" in g.error["message"], g.terminal
