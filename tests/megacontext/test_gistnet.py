"""GistNet: shapes, padding invariance, batching, weights round trip, and training that
learns (on a tiny random base model)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from megacontext.adapter import random_model
from megacontext.errors import RunMismatch
from megacontext.gistnet import (
    GistNet,
    GistNetConfig,
    _rope_tables,
    load_gistnet,
    save_gistnet,
)
from megacontext.train.data import build_corpus, stdlib_files
from megacontext.train.gistnet import (
    TrainConfig,
    evaluate,
    fit_constant,
    load_checkpoint,
    new_state,
    save_checkpoint,
    start_at,
    start_from_weights,
    train_gistnet,
    train_step,
)
from megacontext.train.objective import (
    Batch,
    candidates,
    gist_batch,
    loss_of,
    make_batch,
    substitution,
)
from tests.conftest import tiny_model

SMALL = {"width": 32, "heads": 4, "ffn": 64}
MODEL = random_model(tiny_model().tokenizer, dim=32, layers=2, seed=0)


LLAMA = {"block": "llama", "width": 32, "heads": 4, "kv_heads": 2, "ffn": 64}
BLOCKS = pytest.mark.parametrize("block", ["plain", "llama"])


def net(seed: int = 0, block: str = "plain") -> GistNet:
    torch.manual_seed(seed)
    shape = SMALL if block == "plain" else LLAMA
    return GistNet(GistNetConfig(dim=32, **shape), token_norm=3.0).eval()


@BLOCKS
def test_shapes_and_output_norm(block: str) -> None:
    g = net(block=block)
    x = torch.randn(5, 32, 32)
    mask = torch.ones(5, 32, dtype=torch.bool)
    y = g(x, mask, torch.tensor([1, 1, 2, 2, 3]))
    assert y.shape == (5, 32)
    torch.testing.assert_close(y.norm(dim=-1), torch.full((5,), 3.0))


@BLOCKS
def test_padding_never_changes_the_output(block: str) -> None:
    g = net(block=block)
    x = torch.randn(1, 7, 32)
    alone = g(x, torch.ones(1, 7, dtype=torch.bool), torch.tensor([1]))
    padded = torch.cat([x, torch.randn(1, 25, 32) * 100], 1)  # garbage in the padding
    mask = torch.zeros(1, 32, dtype=torch.bool)
    mask[0, :7] = True
    torch.testing.assert_close(g(padded, mask, torch.tensor([1])), alone)


@BLOCKS
def test_batched_equals_one_by_one(block: str) -> None:
    g = net(block=block)
    lengths = [3, 32, 1, 17]
    groups = [torch.randn(n, 32) for n in lengths]
    x = torch.zeros(4, 32, 32)
    mask = torch.zeros(4, 32, dtype=torch.bool)
    for i, grp in enumerate(groups):
        x[i, : len(grp)] = grp
        mask[i, : len(grp)] = True
    level = torch.tensor([1, 2, 1, 2])
    batched = g(x, mask, level)
    for i, grp in enumerate(groups):
        one = g(grp[None], torch.ones(1, len(grp), dtype=torch.bool), level[i : i + 1])
        torch.testing.assert_close(batched[i : i + 1], one, atol=1e-5, rtol=1e-5)


@BLOCKS
def test_levels_are_told_apart_and_high_levels_share_the_top_embedding(block: str) -> None:
    g = net(block=block)
    with torch.no_grad():
        g.level_embedding.normal_()
    x = torch.randn(1, 8, 32)
    mask = torch.ones(1, 8, dtype=torch.bool)
    one, two, five = (g(x, mask, torch.tensor([n])) for n in (1, 2, 5))
    assert not torch.allclose(one, two)
    torch.testing.assert_close(two, five)


@BLOCKS
def test_weights_round_trip(tmp_path: Path, block: str) -> None:
    g = net(seed=3, block=block)
    g.set_identity("tiny", 10)
    path = save_gistnet(g, tmp_path, "gistnet-tiny", {"base_model": "tiny", "steps": 10})
    loaded, manifest = load_gistnet(path)
    assert manifest["steps"] == 10 and manifest["config"]["width"] == 32
    assert loaded.id == g.id and loaded.id.startswith("gistnet-")
    x, mask = torch.randn(2, 9, 32), torch.ones(2, 9, dtype=torch.bool)
    torch.testing.assert_close(loaded(x, mask, torch.tensor([1, 2])),
                               g(x, mask, torch.tensor([1, 2])), atol=2e-2, rtol=2e-2)
    other = net(seed=4, block=block)
    other.set_identity("tiny", 10)
    assert other.id != g.id  # new weights, new id: cached gists are invalidated


def test_a_llama_block_is_the_base_models_layer_attending_both_ways() -> None:
    """Started from the base model's layer, a llama block computes what that layer computes
    when it is given the layer's causal mask; GistNet itself attends both ways."""
    shape, weights = MODEL.decoder_layer(1)
    assert shape == {"heads": 4, "kv_heads": 2, "ffn": 64, "rope_theta": 10000.0,
                     "norm_eps": MODEL.causal_lm().config.rms_norm_eps}
    g = GistNet(GistNetConfig(dim=32, width=32, block="llama", layers=1, **shape), 3.0)
    g.init_from_layers([weights])
    layer, lm = MODEL.causal_lm().model.layers[1], MODEL.causal_lm()
    x = torch.randn(2, 7, 32)
    positions = torch.arange(7)[None].expand(2, 7)
    want = layer(x, position_ids=positions, position_embeddings=lm.model.rotary_emb(x, positions))
    want = want[0] if isinstance(want, tuple) else want
    rope = _rope_tables(7, 8, shape["rope_theta"], x.device)
    causal = torch.ones(7, 7, dtype=torch.bool).tril()[None, None]
    torch.testing.assert_close(g.blocks[0](x, causal, rope), want)
    both_ways = g.blocks[0](x, torch.ones(1, 1, 1, 7, dtype=torch.bool), rope)
    assert not torch.allclose(both_ways, want)


def test_a_llama_gistnet_starts_from_the_base_models_first_layers(tmp_path: Path) -> None:
    config = _config(tmp_path, net={"block": "llama"})
    state = new_state(config, MODEL)
    c = state.net.config
    assert (c.width, c.heads, c.kv_heads, c.ffn) == (32, 4, 2, 64)
    for i, block in enumerate(state.net.blocks):
        for name, tensor in MODEL.decoder_layer(i)[1].items():
            torch.testing.assert_close(block.state_dict()[name], tensor)
    with pytest.raises(ValueError, match="base width"):
        GistNetConfig(dim=32, width=64, block="llama")
    with pytest.raises(ValueError, match="unknown GistNet block"):
        GistNetConfig(dim=32, block="conv")
    with pytest.raises(ValueError, match="only a llama GistNet"):
        net().init_from_layers([])


def test_a_checkpoint_written_before_the_block_option_still_loads(tmp_path: Path) -> None:
    state = new_state(_config(tmp_path), MODEL)
    save_checkpoint(state, _config(tmp_path), tmp_path / "c.pt")
    saved = torch.load(tmp_path / "c.pt", weights_only=False)
    for key in ("block", "kv_heads", "rope_theta", "norm_eps"):
        del saved["net_config"][key]  # as an older version wrote it
    torch.save(saved, tmp_path / "c.pt")
    again = new_state(_config(tmp_path), MODEL)
    load_checkpoint(again, tmp_path / "c.pt")
    assert again.step == state.step


def test_a_run_continues_exported_weights_of_its_own_shape_only(tmp_path: Path) -> None:
    plain = new_state(_config(tmp_path), MODEL)
    with torch.no_grad():
        plain.net.query.add_(1.0)
    path = save_gistnet(plain.net, tmp_path / "w", "gistnet-tiny", {"base_model": MODEL.id})
    again = new_state(_config(tmp_path, seed=1), MODEL)
    start_from_weights(again, path)
    torch.testing.assert_close(again.net.query, plain.net.query.half().float())
    llama = new_state(_config(tmp_path, net={"block": "llama"}), MODEL)
    before = {k: v.clone() for k, v in llama.net.state_dict().items()}
    with pytest.raises(RunMismatch, match="another shape"):
        start_from_weights(llama, path)
    for k, v in llama.net.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_a_run_started_from_weights_counts_their_steps_and_refuses_others(
        tmp_path: Path) -> None:
    (tmp_path / "lib" / "json").mkdir(parents=True)
    lib = _repo(tmp_path / "lib")
    _repo(lib / "json")  # a held-out package: the validation set
    first = _config(tmp_path, lib=lib, steps=3, eval_every=100, eval_examples=2)
    done = train_gistnet(first, MODEL, lambda s, n, m: None)
    weights = first.out / "gistnet-tiny-random.safetensors"
    config = _config(tmp_path, lib=lib, out=tmp_path / "more", steps=2, lr=0.0,
                     eval_every=100, eval_examples=2, init=weights, constant_steps=5,
                     constant_lr=0.05)  # the weights replace the fitted constant's start
    more = train_gistnet(config, MODEL, lambda s, n, m: None)  # lr 0: still the weights
    for a, b in zip(more.net.parameters(), done.net.half().float().parameters(), strict=True):
        torch.testing.assert_close(a, b)
    manifest = json.loads((config.out / "gistnet-tiny-random.json").read_text())
    assert manifest["steps"] == 3 + 2 and manifest["continues"]["steps"] == 3
    assert manifest["continues"]["weights"] == weights.name
    longer = train_gistnet(replace(config, steps=3, init=None), MODEL, lambda s, n, m: None)
    assert longer.step == 3 and longer.continues == more.continues  # the checkpoint keeps it
    for bad, match in ((tmp_path / "absent.safetensors", "not a GistNet"),
                       (save_gistnet(done.net, tmp_path / "w", "gistnet-other",
                                     {"base_model": "another-model@0"}), "trained for")):
        with pytest.raises(RunMismatch, match=match):
            train_gistnet(replace(config, out=tmp_path / "bad", init=bad), MODEL,
                          lambda s, n, m: None)


def test_a_run_may_give_continued_weights_more_level_embeddings(tmp_path: Path) -> None:
    two = new_state(_config(tmp_path), MODEL)
    with torch.no_grad():
        two.net.level_embedding.add_(torch.randn_like(two.net.level_embedding))
    path = save_gistnet(two.net, tmp_path / "w", "gistnet-tiny", {"base_model": MODEL.id})
    five = new_state(_config(tmp_path, seed=1, net={**SMALL, "levels": 5}), MODEL)
    start_from_weights(five, path)
    x = torch.randn(3, 7, 32)
    mask = torch.ones(3, 7, dtype=torch.bool)
    with torch.no_grad():
        old = two.net.half().float().eval()
        for level in range(1, 7):  # unchanged at every level (above 2: the last's embedding)
            lv = torch.full((3,), level)
            torch.testing.assert_close(five.net.eval()(x, mask, lv), old(x, mask, lv))
    assert five.net.level_embedding.shape[0] == 5
    back = new_state(_config(tmp_path), MODEL)  # fewer levels than the weights: refused
    with pytest.raises(RunMismatch, match="another shape"):
        start_from_weights(back, save_gistnet(five.net, tmp_path / "w5", "gistnet-tiny",
                                              {"base_model": MODEL.id}))


def _repo(root: Path) -> Path:
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "value", "items", "total", "result"]
    for f in range(6):
        lines = []
        for d in range(6):
            a, b = rng.choice(words, 2, replace=False)
            lines += [f"def {a}_{f}_{d}({b}):", f"    {a} = {b} * {d}",
                      f"    return {a} + {f}", ""]
        (root / f"mod{f}.py").write_text("\n".join(lines))
    return root


def _config(tmp_path: Path, **kw: object) -> TrainConfig:
    values = {"lib": tmp_path, "out": tmp_path / "run", "steps": 40, "batch": 4,
              "level2_batch": 2, "level2_every": 0, "prefix": 16, "horizon": 8, "lr": 3e-3,
              "warmup": 1, "net": SMALL, "accumulate": 1, "constant_steps": 0}
    return TrainConfig(**{**values, **kw})


@pytest.mark.parametrize("shape", [SMALL, {"block": "llama"}], ids=["plain", "llama"])
def test_training_step_reduces_the_loss_on_a_tiny_model(tmp_path: Path, shape: dict) -> None:
    corpus = build_corpus(_repo(tmp_path), sorted(p.name for p in tmp_path.glob("*.py")), MODEL)
    config = _config(tmp_path, net=shape)
    state = new_state(config, MODEL)
    rows = candidates(corpus, 1, config.prefix, config.horizon)[:4]

    def loss() -> float:
        b = make_batch(corpus, rows, 1, config.prefix, config.horizon)
        with torch.no_grad():
            out = substitution(MODEL, b, gist_batch(state.net.eval(), MODEL, b, MODEL.device))
        return float((out.kl + out.nll_gist).mean())

    before = loss()
    for _ in range(60):
        train_step(state, config, MODEL, corpus, 1, [rows])
    assert loss() < before - 0.05, (before, loss())


def test_the_hidden_state_term_is_zero_only_where_the_gist_reproduces_the_span() -> None:
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 200, size=(3, 1 + 1 + 8))  # prefix 1, span 1, continuation 8
    b = Batch(level=1, prefix=torch.from_numpy(ids[:, :1]), spans=list(ids[:, 1:2]),
              children=[[s] for s in ids[:, 1:2]], cont=torch.from_numpy(ids[:, 2:]))
    itself = MODEL.embed(torch.from_numpy(ids[:, 1]))  # a one-token span's own embedding
    plain = substitution(MODEL, b, itself)
    out = substitution(MODEL, b, itself, states=True)
    assert plain.hidden is None and out.hidden is not None
    torch.testing.assert_close(out.kl, plain.kl)  # asking for states changes nothing else
    torch.testing.assert_close(out.nll_gist, plain.nll_gist)
    assert float(out.hidden.abs().max()) < 1e-6 and float(out.kl.abs().max()) < 1e-5
    other = substitution(MODEL, b, itself.roll(1, 0), states=True)  # another span's token
    assert other.hidden is not None and bool((other.hidden > 1e-3).all())
    torch.testing.assert_close(loss_of(other), (other.kl + other.nll_gist).mean())
    torch.testing.assert_close(loss_of(other, 2.0),
                               (other.kl + other.nll_gist + 2 * other.hidden).mean())


def test_training_with_the_hidden_state_term_reduces_it(tmp_path: Path) -> None:
    corpus = build_corpus(_repo(tmp_path), sorted(p.name for p in tmp_path.glob("*.py")), MODEL)
    config = _config(tmp_path, hidden_weight=5.0)
    state = new_state(config, MODEL)
    rows = candidates(corpus, 1, config.prefix, config.horizon)[:4]

    def hidden() -> float:
        b = make_batch(corpus, rows, 1, config.prefix, config.horizon)
        with torch.no_grad():
            g = gist_batch(state.net.eval(), MODEL, b, MODEL.device)
            return float(substitution(MODEL, b, g, states=True).hidden.mean())

    before = hidden()
    for _ in range(40):
        m = train_step(state, config, MODEL, corpus, 1, [rows])
    assert hidden() < before * 0.8, (before, hidden())
    assert np.isfinite(m["loss"]) and m["hidden"] > 0


def test_the_reconstruction_term_is_the_spans_nll_read_after_its_gist() -> None:
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 200, size=(3, 4 + 5 + 6))  # prefix 4, span ≤ 5, continuation 6
    spans = [ids[0, 4:9], ids[1, 4:7], ids[2, 4:5]]  # ragged: padding must not count
    b = Batch(level=1, prefix=torch.from_numpy(ids[:, :4]), spans=spans,
              children=[[s] for s in spans], cont=torch.from_numpy(ids[:, 9:]))
    gists = torch.randn(3, MODEL.dim) * 3.0
    out = substitution(MODEL, b, gists, recon=True)
    assert substitution(MODEL, b, gists).recon is None
    for i, span in enumerate(spans):  # one unbatched pass over [prefix][gist][span] each
        seq = torch.cat([MODEL.embed(torch.from_numpy(ids[i, :4])), gists[i : i + 1],
                         MODEL.embed(torch.from_numpy(span[:-1].astype(np.int64)))])
        logits, _ = MODEL.batch_forward(seq[None])
        logp = logits[0, 4:].float().log_softmax(-1)
        want = -logp.gather(-1, torch.from_numpy(span.astype(np.int64))[:, None]).mean()
        assert abs(float(out.recon[i]) - float(want)) < 1e-4, (i, out.recon[i], want)
    torch.testing.assert_close(loss_of(out, recon_weight=0.5),
                               (out.kl + out.nll_gist + 0.5 * out.recon).mean())


def test_the_reconstruction_term_trains_the_gist(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 200, size=(3, 4 + 5 + 6))
    b = Batch(level=1, prefix=torch.from_numpy(ids[:, :4]), spans=list(ids[:, 4:9]),
              children=[[s] for s in ids[:, 4:9]], cont=torch.from_numpy(ids[:, 9:]))
    free = (torch.randn(3, MODEL.dim) * 3.0).requires_grad_(True)  # gradients reach the gist
    optimizer = torch.optim.Adam([free], lr=0.3)
    with torch.no_grad():
        before = float(substitution(MODEL, b, free, recon=True).recon.mean())
    for _ in range(20):
        optimizer.zero_grad()
        substitution(MODEL, b, free, recon=True).recon.mean().backward()
        optimizer.step()
    with torch.no_grad():
        after_fit = float(substitution(MODEL, b, free, recon=True).recon.mean())
    assert after_fit < before - 0.05

    corpus = build_corpus(_repo(tmp_path), sorted(p.name for p in tmp_path.glob("*.py")), MODEL)
    rows = candidates(corpus, 1, 16, 8)[:4]
    after = {}
    for weight in (0.0, 5.0):  # the trainer: the term in the loss, and what it does there
        config = _config(tmp_path, recon_weight=weight, out=tmp_path / f"run{weight}")
        state = new_state(config, MODEL)
        for _ in range(40):
            m = train_step(state, config, MODEL, corpus, 1, [rows])
        if weight:
            assert abs(m["loss"] - (m["kl"] + m["nll_gist"] + weight * m["recon"])) < 1e-4
            assert "recon" not in train_step(state, config, MODEL, corpus, 2, [candidates(
                corpus, 2, 16, 8)[:2]])  # level-2 spans are not reconstructed
        else:
            assert "recon" not in m
        batch = make_batch(corpus, rows, 1, config.prefix, config.horizon)
        with torch.no_grad():
            g = gist_batch(state.net.eval(), MODEL, batch, MODEL.device)
            after[weight] = float(substitution(MODEL, batch, g, recon=True).recon.mean())
    assert after[5.0] < after[0.0], after


def test_a_fresh_run_starts_at_the_best_constant_and_then_learns_content(tmp_path: Path
                                                                         ) -> None:
    corpus = build_corpus(_repo(tmp_path), sorted(p.name for p in tmp_path.glob("*.py")), MODEL)
    config = _config(tmp_path, constant_steps=30, constant_lr=0.05, lr=1e-3)
    rows = candidates(corpus, 1, config.prefix, config.horizon)
    constant = fit_constant(config, MODEL, corpus, rows)
    b = make_batch(corpus, rows[:6], 1, config.prefix, config.horizon)

    def loss(gists: torch.Tensor) -> float:
        with torch.no_grad():
            return float(loss_of(substitution(MODEL, b, gists)))

    start = MODEL.embeddings.float().mean(0).expand(6, -1)
    assert loss(constant.expand(6, -1)) < loss(start) - 0.01
    state = new_state(config, MODEL)
    start_at(state.net, constant)
    g = gist_batch(state.net.eval(), MODEL, b, MODEL.device)
    assert torch.allclose(g, constant.expand(6, -1), atol=1e-4)  # every span: the constant
    train_step(state, config, MODEL, corpus, 1, [rows[:4], rows[4:8]])
    g = gist_batch(state.net.eval(), MODEL, b, MODEL.device).detach()
    assert float((g - g.mean(0)).norm(dim=-1).min()) > 1e-4  # content has started to grow


def test_train_gistnet_starts_a_fresh_run_at_the_fitted_constant(tmp_path: Path) -> None:
    (tmp_path / "lib" / "json").mkdir(parents=True)
    lib = _repo(tmp_path / "lib")
    _repo(lib / "json")  # a held-out package: the validation set
    config = _config(tmp_path, lib=lib, steps=1, lr=0.0, eval_examples=2, constant_steps=5,
                     constant_lr=0.05)
    state = train_gistnet(config, MODEL, lambda s, n, m: None)  # lr 0: still at the start
    corpus = build_corpus(lib, sorted(p.name for p in lib.glob("*.py")), MODEL)
    pool = candidates(corpus, 1, config.prefix, config.horizon)
    constant = fit_constant(config, MODEL, corpus, pool)
    b = make_batch(corpus, pool[:3], 1, config.prefix, config.horizon)
    g = gist_batch(state.net.eval(), MODEL, b, MODEL.device)
    assert torch.allclose(g, constant.expand(3, -1), atol=1e-4)


def test_level_two_gists_come_from_level_one_gists(tmp_path: Path) -> None:
    corpus = build_corpus(_repo(tmp_path), sorted(p.name for p in tmp_path.glob("*.py")), MODEL)
    rows = candidates(corpus, 2, 16, 8)
    assert len(rows) > 0
    b = make_batch(corpus, rows[:2], 2, 16, 8)
    assert all(len(kids) > 1 for kids in b.children)
    assert all(np.array_equal(np.concatenate(kids), span)
               for kids, span in zip(b.children, b.spans, strict=True))
    g = gist_batch(net(), MODEL, b, MODEL.device)
    assert g.shape == (2, 32)
    out = substitution(MODEL, b, g, with_drop=True)
    assert out.nll_drop is not None and torch.isfinite(out.recovery()).all()


class _FirstChild(torch.nn.Module):
    """A 'gist' that is its span's first token: it depends on the span."""

    def forward(self, children: torch.Tensor, mask: torch.Tensor, level: torch.Tensor
                ) -> torch.Tensor:
        return children[:, 0]


def test_the_content_control_sees_a_gist_that_ignores_its_span(tmp_path: Path) -> None:
    corpus = build_corpus(_repo(tmp_path), sorted(p.name for p in tmp_path.glob("*.py")), MODEL)
    rows = candidates(corpus, 1, 16, 8)[:8]
    varied = _FirstChild()
    constant = net()
    with torch.no_grad():  # the projection ignores the pooled state: one vector for all spans
        constant.proj.weight.zero_()
        constant.proj.bias.normal_()
    own = evaluate(varied, MODEL, corpus, rows, 1, 16, 8, batch=4)
    blind = evaluate(constant, MODEL, corpus, rows, 1, 16, 8, batch=4)
    assert abs(blind["nll_other"] - blind["nll_gist"]) < 1e-6, blind  # content 0
    assert abs(own["nll_other"] - own["nll_gist"]) > 1e-4, own  # the tiny model reacts little
    assert own["nll_raw"] == blind["nll_raw"] and own["nll_drop"] == blind["nll_drop"]


def test_checkpoint_round_trip_and_resume(tmp_path: Path) -> None:
    (tmp_path / "lib" / "json").mkdir(parents=True)
    lib = _repo(tmp_path / "lib")
    (lib / "os.py").write_text("import sys\n")
    _repo(lib / "json")  # a held-out package: the validation set
    config = _config(tmp_path, lib=lib, steps=4, eval_every=100, eval_examples=2,
                     checkpoint_every=2, level2_every=2)
    seen: list[int] = []
    state = train_gistnet(config, MODEL, lambda s, n, m: seen.append(s))
    assert seen == [0, 1, 2, 3, 4] and state.step == 4  # 0: the check where it starts
    assert (config.out / "checkpoint.pt").is_file()
    assert (config.out / "gistnet-tiny-random.safetensors").is_file()
    again = new_state(config, MODEL)
    load_checkpoint(again, config.out / "checkpoint.pt")
    assert again.step == 4 and len(again.history) == 4
    for a, b in zip(again.net.parameters(), state.net.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    longer = _config(tmp_path, lib=lib, steps=7, eval_every=100, eval_examples=2,
                     level2_every=2)
    midway = train_gistnet(longer, MODEL, lambda s, n, m: seen.append(s), stop_at=5)
    assert midway.step == 5 and seen[-1] == 5  # stopped midway through a longer schedule
    assert load_checkpoint(again, config.out / "checkpoint.pt") is None and again.step == 5
    more = train_gistnet(replace(longer, steps=6), MODEL, lambda s, n, m: seen.append(s))
    assert more.step == 6 and seen[-2:] == [5, 6]  # resumed, not restarted
    save_checkpoint(more, config, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="another shape"):
        load_checkpoint(new_state(_config(tmp_path, net={**SMALL, "ffn": 128}), MODEL),
                        tmp_path / "c.pt")


def test_training_on_prepared_corpora_equals_training_from_lib(tmp_path: Path) -> None:
    """What scripts/train_gistnet_gpu.py relies on: the corpora carried elsewhere train the
    same weights as the `Lib/` they were built from."""
    (tmp_path / "lib" / "json").mkdir(parents=True)
    lib = _repo(tmp_path / "lib")
    _repo(lib / "json")
    kw = {"lib": lib, "steps": 3, "eval_every": 100, "eval_examples": 2, "level2_every": 2}
    from_lib = train_gistnet(_config(tmp_path, **kw), MODEL, lambda s, n, m: None)
    corpora = (build_corpus(lib, stdlib_files(lib, "train"), MODEL),
               build_corpus(lib, stdlib_files(lib, "holdout"), MODEL))
    config = _config(tmp_path, **{**kw, "lib": tmp_path / "absent"}, out=tmp_path / "packed")
    packed = train_gistnet(config, MODEL, lambda s, n, m: None, corpora=corpora)
    assert [h["loss"] for h in packed.history] == [h["loss"] for h in from_lib.history]
    for a, b in zip(packed.net.parameters(), from_lib.net.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_packed_corpora_round_trip(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "train_gistnet_gpu", Path(__file__).parents[2] / "scripts" / "train_gistnet_gpu.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    lib = _repo(tmp_path)
    corpus = build_corpus(lib, ["mod0.py", "mod1.py", "mod2.py"], MODEL)
    held = build_corpus(lib, ["mod3.py"], MODEL)
    script.write_packed(MODEL.id, corpus, held, tmp_path / "packed.npz")
    model_id, a, b = script.unpack(tmp_path / "packed.npz")
    assert model_id == MODEL.id and (a.files, b.files) == (3, 1)
    for got, want in ((a, corpus), (b, held)):
        for f in script.FIELDS:
            np.testing.assert_array_equal(getattr(got, f), getattr(want, f))
        assert got.stream.dtype == np.int32


def test_data_rule_keeps_tests_site_packages_and_held_out_packages_out(tmp_path: Path) -> None:
    for rel in ("os.py", "json/decoder.py", "test/test_os.py", "site-packages/click/core.py",
                "collections/__init__.py", "idlelib/idle_test/x.py", "test_thing.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    assert stdlib_files(tmp_path, "train") == ["collections/__init__.py", "os.py"]
    assert stdlib_files(tmp_path, "holdout") == ["json/decoder.py"]


def test_bfloat16_inference_on_cpu_matches_float32() -> None:
    g = net()
    x, mask = torch.randn(6, 32, 32), torch.ones(6, 32, dtype=torch.bool)
    exact = g(x, mask, torch.ones(6, dtype=torch.long))
    g.cpu_bf16 = True
    fast = g(x, mask, torch.ones(6, dtype=torch.long))
    assert fast.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(exact, fast).min() > 0.99


@pytest.mark.model
def test_shipped_weights_for_the_default_model(real_model) -> None:
    from megacontext.gistnet import default_gist_model, shipped_weights

    weights = shipped_weights(real_model.id)
    assert weights is not None, f"no GistNet weights ship for {real_model.id}"
    assert weights.stat().st_size <= 20 * 2**20
    g = default_gist_model(real_model)
    assert isinstance(g, GistNet) and g.id.startswith("gistnet-")
    _, manifest = load_gistnet(weights)
    for key in ("base_model", "steps", "seed", "data", "loss_curve", "commit", "evals"):
        assert key in manifest, key
    assert manifest["data"]["source"].startswith("Python standard library")
    ids = torch.from_numpy(real_model.encode(["def add(a, b):\n    return a + b\n"])[0].ids)
    x = real_model.embeddings[ids.long()][None]
    y = g(x, torch.ones(x.shape[:2], dtype=torch.bool), torch.tensor([1]))
    assert y.shape == (1, real_model.dim)
    assert y.norm() == pytest.approx(real_model.token_norm * float(g.log_gain.exp()), rel=1e-2)


def test_shipped_gists_carry_their_spans(real_model) -> None:
    """The content control on held-out code: a span's own gist beats another span's (a
    collapsed GistNet, one vector for every span, scores 0 here)."""
    import sysconfig

    from megacontext.gistnet import default_gist_model

    lib = Path(sysconfig.get_paths()["stdlib"])
    corpus = build_corpus(lib, ["json/decoder.py", "json/encoder.py"], real_model)
    rows = candidates(corpus, 1, 64, 48)
    rows = rows[np.linspace(0, len(rows) - 1, 16).astype(int)]
    result = evaluate(default_gist_model(real_model), real_model, corpus, rows, 1, 64, 48)
    assert result["content"] > 0.05, result
