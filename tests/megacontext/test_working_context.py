"""Working context equivalences on a tiny random-weight Llama."""

from __future__ import annotations

import torch

from megacontext.adapter import random_model
from megacontext.working_context import Entries, WorkingContext
from tests.conftest import tiny_model

MODEL = random_model(tiny_model().tokenizer, dim=32, layers=2, seed=0)


def raw(model, node: int, ids: list[int]) -> tuple[int, torch.Tensor]:
    return 2 * node + 1, model.embed(torch.tensor(ids))


def entries(pieces: list[tuple[int, torch.Tensor]]) -> Entries:
    return Entries.of(pieces, MODEL.dim)


def blocks(seed: int, n: int = 6) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (int(torch.randint(1, 9, (1,), generator=g)),),
                          generator=g).tolist() for _ in range(n)]


def test_all_raw_equals_plain_forward() -> None:
    before, after = [1, 2, 3], [4, 5]
    bs = blocks(0)
    wc = WorkingContext(MODEL, before, after)
    wc.entries = entries([raw(MODEL, i, b) for i, b in enumerate(bs)])
    logits = wc.prefill()
    ids = torch.tensor([before + [t for b in bs for t in b] + after])
    plain = MODEL.causal_lm()(input_ids=ids).logits
    assert logits.shape == plain.shape
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=1e-4)


def test_cached_after_edit_equals_uncached() -> None:
    before, after = [7, 8], [9]
    bs = blocks(1, 8)
    g = torch.Generator().manual_seed(3)
    gist = (2 * 99, torch.randn(1, MODEL.dim, generator=g))
    wc = WorkingContext(MODEL, before, after)
    wc.entries = entries([raw(MODEL, i, b) for i, b in enumerate(bs)])
    wc.prefill()
    edited = [raw(MODEL, i, b) for i, b in enumerate(bs)]
    edited[5:7] = [gist]  # collapse two blocks into a gist
    wc.entries = entries(edited)
    cached = wc.prefill()
    assert wc.reused == len(before) + sum(len(b) for b in bs[:5]), "prefix reused"
    fresh = WorkingContext(MODEL, before, after)
    fresh.entries = entries(edited)
    full = fresh.prefill()
    torch.testing.assert_close(cached, full[:, -cached.shape[1]:], atol=1e-5, rtol=1e-4)


def test_generation_does_not_leak_into_the_context() -> None:
    wc = WorkingContext(MODEL, [1, 2], [3])
    wc.entries = entries([raw(MODEL, 0, [10, 11, 12])])
    first = list(wc.generate(5))
    again = list(wc.generate(5))
    assert len(first) == 5 and first == again, "the cache is cropped back after generating"
    plain = []
    ids = torch.tensor([[1, 2, 10, 11, 12, 3]])
    for _ in range(5):
        nxt = int(MODEL.causal_lm()(input_ids=ids).logits[0, -1].argmax())
        plain.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    assert first == plain, "streamed greedy decoding equals step-by-step full forwards"


def test_question_change_recomputes_only_the_question() -> None:
    before, bs = [7, 8], blocks(2, 5)
    wc = WorkingContext(MODEL, before, [9, 10])
    wc.entries = entries([raw(MODEL, i, b) for i, b in enumerate(bs)])
    wc.prefill()
    again = wc.prefill()
    assert again.shape[1] == 1 and wc.reused == wc.length - 1, "unchanged: last position only"
    wc.set_question([11, 12, 13])
    cached = wc.prefill()
    assert wc.reused == len(before) + sum(len(b) for b in bs)
    ids = torch.tensor([before + [t for b in bs for t in b] + [11, 12, 13]])
    plain = MODEL.causal_lm()(input_ids=ids).logits
    torch.testing.assert_close(cached, plain[:, -3:], atol=1e-5, rtol=1e-4)
