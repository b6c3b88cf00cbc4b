import math

import pytest
import torch
from torch import nn

from metakit.algorithms import get_algorithm
from metakit.algorithms.matching import MatchingNet, attention_log_probs
from metakit.models import Conv4
from metakit.tasks import EpisodeBatch


def test_registered():
    assert get_algorithm("matching") is MatchingNet


def test_attention_by_hand():
    q = torch.tensor([[[1.0, 0.0]]])
    s = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [3.0, 3.0]]])
    y = torch.tensor([[0, 1, 1]])
    logp = attention_log_probs(q, s, y, 2)[0, 0]
    # cosines: 1, 0, 1/sqrt(2); P(0) = e^1 / Z, P(1) = (e^0 + e^{0.7071}) / Z
    c = 1 / math.sqrt(2)
    z = math.e + 1 + math.exp(c)
    assert logp.tolist() == pytest.approx([math.log(math.e / z), math.log((1 + math.exp(c)) / z)], rel=1e-6)
    scaled = attention_log_probs(q, s, y, 2, scale=3.0)[0, 0]
    z3 = math.exp(3) + 1 + math.exp(3 * c)
    assert scaled[0].item() == pytest.approx(3 - math.log(z3), rel=1e-6)
    # the query's norm left in (normalize_query=False): similarities |q| cos = 5 * (1, 0, 1/sqrt 2) for q = (5, 0)
    raw = attention_log_probs(5 * q, s, y, 2, normalize_query=False)[0, 0]
    z5 = math.exp(5) + 1 + math.exp(5 * c)
    assert raw.tolist() == pytest.approx([5 - math.log(z5), math.log((1 + math.exp(5 * c)) / z5)], rel=1e-6)
    assert attention_log_probs(5 * q, s, y, 2)[0, 0].tolist() == pytest.approx(logp.tolist(), rel=1e-6)  # cosine: no effect
    # the module's option reaches its scores
    raw_net = MatchingNet(nn.Flatten(), normalize_query=False)
    assert raw_net.task_scores(s, y, 5 * q, 2)[0, 0].tolist() == pytest.approx(raw.tolist(), rel=1e-6)
    assert MatchingNet(nn.Flatten()).task_scores(s, y, 5 * q, 2)[0, 0].tolist() == pytest.approx(logp.tolist(), rel=1e-6)
    assert "normalize_query=False" in repr(raw_net)


def test_predict_adapt_and_loss_on_identity_encoder():
    algo = MatchingNet(nn.Flatten())
    batch = EpisodeBatch(
        torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]),
        torch.tensor([[0, 1]]),
        torch.tensor([[[2.0, 0.1], [0.0, 5.0]]]),
        torch.tensor([[0, 0]]),
        2,
    )
    logp = algo.predict(batch)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(1, 2))
    assert logp.argmax(-1).tolist() == [[0, 1]]
    loss, metrics = algo.meta_loss(batch)
    assert loss.item() == pytest.approx(-(logp[0, 0, 0] + logp[0, 1, 0]).item() / 2, rel=1e-6)
    assert metrics["accuracy"] == 0.5
    learner = algo.adapt(batch.support_x[0], batch.support_y[0])
    assert torch.allclose(learner.predict(batch.query_x[0]), logp[0])


def _lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh):
    gates = x @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    i, f, g, o = gates.chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def test_full_context_embeddings_match_a_hand_unrolled_reference():
    torch.manual_seed(0)
    d, s, q, steps = 3, 4, 2, 3
    algo = MatchingNet(nn.Flatten(), fce=True, fce_steps=steps, feature_dim=d).double()
    zs = torch.randn(1, s, d, dtype=torch.float64)
    zq = torch.randn(1, q, d, dtype=torch.float64)
    lstm, cell = algo.support_lstm, algo.query_cell
    # bidirectional LSTM over the support, written out step by step
    fwd, bwd = [], [None] * s
    h = c = torch.zeros(d, dtype=torch.float64)
    for i in range(s):
        h, c = _lstm_step(zs[0, i], h, c, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)
        fwd.append(h)
    h = c = torch.zeros(d, dtype=torch.float64)
    for i in reversed(range(s)):
        h, c = _lstm_step(
            zs[0, i], h, c, lstm.weight_ih_l0_reverse, lstm.weight_hh_l0_reverse, lstm.bias_ih_l0_reverse, lstm.bias_hh_l0_reverse
        )
        bwd[i] = h
    g_ref = torch.stack([zs[0, i] + fwd[i] + bwd[i] for i in range(s)])
    g = algo.full_context_support(zs)[0]
    assert torch.allclose(g, g_ref, atol=1e-12)
    # attention LSTM for each query: read with the previous state, then step
    f_ref = []
    for j in range(q):
        x = zq[0, j]
        h = c = torch.zeros(d, dtype=torch.float64)
        for _ in range(steps):
            r = torch.softmax(g_ref @ h, 0) @ g_ref
            h_hat, c = _lstm_step(torch.cat([x, r]), h, c, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
            h = h_hat + x
        f_ref.append(h)
    f = algo.full_context_query(zq, g.unsqueeze(0))[0]
    assert torch.allclose(f, torch.stack(f_ref), atol=1e-12)
    # and the scores are the cosine attention on these embeddings
    y = torch.tensor([[0, 1, 0, 1]])
    assert torch.allclose(algo.task_scores(zs, y, zq, 2), attention_log_probs(torch.stack(f_ref)[None], g_ref[None], y, 2))


def test_fce_depends_on_the_support_set_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    algo = MatchingNet(Conv4(hidden=8), fce=True, fce_steps=2)
    batch = EpisodeBatch(
        torch.randn(2, 3, 1, 28, 28), torch.tensor([[0, 1, 2]] * 2), torch.randn(2, 6, 1, 28, 28), torch.tensor([[0, 1, 2] * 2] * 2), 3
    )
    loss, _ = algo.meta_loss(batch)
    loss.backward()
    named = dict(algo.named_parameters())
    assert any(k.startswith("support_lstm") for k in named) and any(k.startswith("query_cell") for k in named)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in algo.parameters())
    algo.eval()
    with torch.no_grad():
        zs, zq = algo.encode(batch)
        base = algo.task_scores(zs[:1], batch.support_y[:1], zq[:1], 3)
        other = algo.task_scores(zs[:1] * 2, batch.support_y[:1], zq[:1], 3)
    assert not torch.allclose(base, other)  # full context: queries are embedded given the support


@pytest.mark.parametrize("normalize_query", [True, False])
def test_gradient_matches_finite_differences_without_fce(finite_differences, normalize_query):
    torch.manual_seed(0)
    enc = nn.Linear(3, 2).double()
    algo = MatchingNet(enc, scale=2.0, normalize_query=normalize_query)
    batch = EpisodeBatch(
        torch.randn(1, 4, 3, dtype=torch.float64),
        torch.tensor([[0, 1, 0, 1]]),
        torch.randn(1, 3, 3, dtype=torch.float64),
        torch.tensor([[0, 1, 1]]),
        2,
    )
    algo.meta_loss(batch)[0].backward()
    grads = torch.cat([p.grad.reshape(-1) for p in enc.parameters()])
    fd = finite_differences(lambda: algo.meta_loss(batch)[0], list(enc.parameters()))
    assert torch.allclose(grads, fd, rtol=0, atol=1e-8), (grads - fd).abs().max()
    assert max(float(p.grad.abs().max()) for p in enc.parameters()) > 1e-2  # not a vacuous match


def test_bad_inputs():
    with pytest.raises(TypeError, match="fce=1 must be True or False"):
        MatchingNet(nn.Flatten(), fce=1)
    with pytest.raises(ValueError, match="fce_steps=0 must be a finite int > 0"):
        MatchingNet(nn.Flatten(), fce_steps=0)
    with pytest.raises(ValueError, match="scale=-1.0 must be a finite number > 0"):
        MatchingNet(nn.Flatten(), scale=-1.0)
    with pytest.raises(TypeError, match="normalize_query='no' must be True or False"):
        MatchingNet(nn.Flatten(), normalize_query="no")
    with pytest.raises(ValueError, match="cannot tell the embedding size of encoder Flatten"):
        MatchingNet(nn.Flatten(), fce=True)
    algo = MatchingNet(nn.Flatten())
    with pytest.raises(ValueError, match="ways=0 must be a positive int"):
        algo.adapt(torch.zeros(2, 2), torch.tensor([0, 0]), 0)
    with pytest.raises(ValueError, match="support_x has shape \\(3, 2\\) but support_y has shape \\(2,\\)"):
        algo.adapt(torch.zeros(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="the support set is empty"):
        algo.adapt(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
