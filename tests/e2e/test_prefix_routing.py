"""Requests whose prompts begin alike (a shared system prompt of 256 bytes
or more) go to the same worker, whose prefix cache then holds it; short
prompts still go to the least loaded worker."""
import pytest

import conftest
import rillclient as rc
from rillclient import GREEDY, JSON, Client, run, sampling

SYSTEM = ("You are a careful assistant. Answer in one short paragraph, cite nothing, and never "
          "repeat the question. Prefer plain words to jargon, keep numbers exact, and say so when "
          "you do not know. Stay polite, stay on topic, and stop when the answer is complete. ") * 2


@pytest.fixture(scope="module")
def two(module_pipelines, tiny_model):
    return module_pipelines(tiny_model, workers=2)


def test_a_shared_beginning_goes_to_one_worker(two, tiny_model):
    assert len(SYSTEM.encode()) >= 256

    async def main():
        async with await Client.connect(two.url, JSON) as c:
            gens = []
            for k in range(8):  # one at a time: the load never tips the choice
                gens.append(await c.run(SYSTEM + f"Question {k}?", 4, sampling(GREEDY), gid=f"q{k}"))
            # Two other system prompts: each has its worker too.
            others = [await c.run(f"[{k}] " + SYSTEM + "Again?", 4, sampling(GREEDY), gid=f"o{k}")
                      for k in range(6)]
        return gens, others

    gens, others = run(main())
    for g in gens + others:
        assert g.terminal["type"] == "complete", g.terminal
    assert len({g.accepted["worker"] for g in gens}) == 1, [g.accepted["worker"] for g in gens]
    assert rc.triples(gens[0].tokens) == list(rc.expected(tiny_model, SYSTEM + "Question 0?", 4, sampling(GREEDY)))


def test_short_prompts_still_spread_by_load(two):
    async def main():
        async with await Client.connect(two.url, JSON) as c:
            for k in range(4):
                await c.generate(f"Short {k}", 200, sampling(GREEDY), gid=f"s{k}")
            await c.until(lambda: all(c.gen(f"s{k}").accepted for k in range(4)))
            on = sorted(c.gen(f"s{k}").accepted["worker"] for k in range(4))
            await c.cancel()
            await c.wait_done(*[f"s{k}" for k in range(4)])
        return on

    assert run(main()) == ["w0", "w0", "w1", "w1"]
