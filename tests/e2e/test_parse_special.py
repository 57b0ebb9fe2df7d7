"""params.parse_special: control-token text in a prompt ("</s>") is the
control token by default, as in llama.cpp's server; false keeps it plain
text (for untrusted input), as the worker's standalone mode does."""
import pytest

import rillclient as rc
from rillclient import GREEDY, JSON, MSGPACK, Client, run, sampling


@pytest.fixture(scope="module")
def gw(module_pipelines, small_model):
    return module_pipelines(small_model)


@pytest.mark.parametrize("proto", [JSON, MSGPACK])
def test_control_text_is_parsed_unless_told_not_to(gw, small_model, proto):
    prompt = "Once</s> upon<s> a time"
    plain = rc.expected(small_model, prompt, 24, sampling(GREEDY))

    async def main():
        async with await Client.connect(gw.url, proto) as c:
            off = await c.run(prompt, 24, sampling(GREEDY, parse_special=False))
            on = await c.run(prompt, 24, sampling(GREEDY))
            explicit = await c.run(prompt, 24, sampling(GREEDY, parse_special=True))
            await c.generate(prompt, 4, sampling(GREEDY, parse_special="yes"), gid="bad")
            (bad,) = await c.wait_done("bad")
        return off, on, explicit, bad

    off, on, explicit, bad = run(main())
    rc.check_complete(off, plain)
    assert rc.triples(on.tokens) == rc.triples(explicit.tokens)
    assert rc.triples(on.tokens) != list(plain), "the control tokens made no difference: were they parsed?"
    assert bad.error["code"] == "bad_request" and "parse_special" in bad.error["message"], bad.terminal
