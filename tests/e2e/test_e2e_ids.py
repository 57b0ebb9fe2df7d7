"""Client ids that take many bytes in JSON: every frame of the generation is
still valid JSON and echoes the id exactly.

An id is 1 to 64 bytes of UTF-8, and JSON writes a '"' or '\\' as two bytes
and a control character as six (\\u0001).  The gateway wrote the accepted
frame into 256 bytes and the token frames' prefix into 160, so such an id
cut those frames short: the client got text that was not JSON.
"""
import pytest

import rillclient as rc
from rillclient import GREEDY, JSON, MSGPACK, Client, run, sampling

IDS = [
    ("quotes", '"' * 64),
    ("backslashes", "\\" * 64),
    ("control", "\x01" * 64),
    ("mixed", '"\x1f\\\u00e9' * 12 + '"\x1f'),  # 62 bytes, 186 in JSON
]


@pytest.fixture(scope="module")
def tiny(module_pipelines, tiny_model):
    return module_pipelines(tiny_model)


@pytest.mark.parametrize("proto", [JSON, MSGPACK])
@pytest.mark.parametrize("case", IDS, ids=[c[0] for c in IDS])
def test_long_escaped_id_is_echoed_in_every_frame(tiny, tiny_model, proto, case):
    _, gid = case
    assert len(gid.encode()) <= 64
    prompt, n, params = "Once upon a time", 12, sampling(GREEDY)
    want = rc.expected(tiny_model, prompt, n, params)

    async def main():
        async with await Client.connect(tiny.url, proto) as c:
            # Client.recv decodes every frame (json.loads / msgpack): a cut
            # frame fails here; run() checks each one carries this id.
            g = await c.run(prompt, n, params, gid=gid)
            assert g.accepted["id"] == gid
            assert g.terminal["id"] == gid
        rc.check_complete(g, want)
    run(main())
