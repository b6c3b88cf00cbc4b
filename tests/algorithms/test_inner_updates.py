"""Inner update rules: every rule's steps against a hand-written reference (and torch.optim.SGD
where it applies), its second-order meta-gradient against finite differences in float64, its
first-order meta-gradient against a hand-unrolled one, recomputation (checkpoint=True), vmap
over tasks, purity, and the errors."""

from __future__ import annotations

import copy
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metakit.algorithms._inner import FunctionalModel, inner_loop, inner_loop_vmap
from metakit.algorithms.inner_updates import SGD, Adam, ElementSGD, InnerUpdate, LayerStepSGD, Momentum
from metakit.models import MLP

D64 = torch.float64
STEPS = 3  # more than LayerStepSGD's 2 trained steps below: the third reuses the last rate


class TinyConvBN(nn.Module):
    """conv(1->2) + BatchNorm without running stats + ReLU + linear head, on 1x3x3 inputs (79 weights).
    The convolution has no bias: BatchNorm would cancel it, leaving it a gradient of rounding noise,
    which Adam divides by its own size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(2, track_running_stats=False)
        self.head = nn.Linear(2 * 3 * 3, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))


def _data(tasks: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(tasks, 6, 1, 3, 3, generator=g, dtype=D64)
    sy = torch.randint(0, 3, (tasks, 6), generator=g)
    qx = torch.randn(tasks, 9, 1, 3, 3, generator=g, dtype=D64)
    qy = torch.randint(0, 3, (tasks, 9), generator=g)
    return sx, sy, qx, qy


# Every rule, and how to write its step by hand: (build(params), hand(rule) -> (rate(i, k), mu, nesterov)),
# rate(i, k) being the rate of the i-th adapted parameter at step k and mu the momentum (None: none).
RULES: dict[str, tuple[Callable[[dict[str, Tensor]], InnerUpdate], Callable[[Any], tuple[Any, Any, bool]]]] = {
    "sgd": (lambda p: SGD(0.3), lambda r: (lambda i, k: 0.3, None, False)),
    "layer_step": (lambda p: LayerStepSGD(p, steps=2, lr=0.3), lambda r: (lambda i, k: r.lrs[i][min(k, 1)], None, False)),
    "element": (lambda p: ElementSGD(p, lr=0.3), lambda r: (lambda i, k: r.lrs[i], None, False)),
    "heavy_ball": (lambda p: Momentum(SGD(0.3), 0.6), lambda r: (lambda i, k: 0.3, 0.6, False)),
    "nesterov": (lambda p: Momentum(SGD(0.3), 0.6, nesterov=True), lambda r: (lambda i, k: 0.3, 0.6, True)),
    "heavy_ball_learned_on_layer_step": (
        lambda p: Momentum(LayerStepSGD(p, steps=2, lr=0.3), 0.6, learn=True, dtype=D64),
        lambda r: (lambda i, k: r.base.lrs[i][min(k, 1)], r.momentum, False),
    ),
    "nesterov_learned_on_element": (
        lambda p: Momentum(ElementSGD(p, lr=0.3), 0.6, nesterov=True, learn=True, dtype=D64),
        lambda r: (lambda i, k: r.base.lrs[i], r.momentum, True),
    ),
}
# every rule, by how it is built: those above and Adam, whose steps are checked against torch.optim.Adam
BUILD: dict[str, Callable[[dict[str, Tensor]], InnerUpdate]] = {
    **{name: build for name, (build, _) in RULES.items()},
    "adam": lambda p: Adam(0.05, betas=(0.9, 0.99)),
    "adam_beta1_0": lambda p: Adam(0.05, betas=(0.0, 0.999)),
}
# the rules torch.optim.SGD implements: (lr, momentum, nesterov)
TORCH_SGD = {"sgd": (0.3, 0.0, False), "heavy_ball": (0.3, 0.6, False), "nesterov": (0.3, 0.6, True)}


def _rule(name: str, params: dict[str, Tensor], seed: int = 0) -> InnerUpdate:
    """The rule, its learned hyper-parameters moved off their uniform initial value (seeded)."""
    rule = BUILD[name](params)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for h in rule.parameters():
            h.add_(0.1 * torch.rand(h.shape, generator=g, dtype=h.dtype))
    return rule


def _meta_loss(model: nn.Module, rule: InnerUpdate, data, *, steps: int = STEPS, first_order: bool = False,
               checkpoint: bool = False) -> Tensor:
    fm = FunctionalModel(model)
    params = dict(model.named_parameters())
    sx, sy, qx, qy = data
    total = 0
    for b in range(sx.shape[0]):
        traj = inner_loop(fm, params, sx[b], sy[b], F.cross_entropy, steps=steps, update=rule, adapt=list(params),
                          first_order=first_order, checkpoint=checkpoint)
        total = total + F.cross_entropy(fm(traj[-1], qx[b]), qy[b])
    return total / sx.shape[0]


def _wrt(model: nn.Module, rule: InnerUpdate) -> list[Tensor]:
    return [*model.parameters(), *rule.parameters()]


def _flat(ts) -> Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def _rel_err(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _by_hand(model: nn.Module, params: dict[str, Tensor], x: Tensor, y: Tensor, steps: int, hand, *,
             grads: list[list[Tensor]] | None = None) -> tuple[dict[str, Tensor], list[list[Tensor]]]:
    """The rule's steps written out (module docstring of inner_updates): ``v = mu*v + g``, step along
    ``v`` (heavy ball) or ``g + mu*v`` (Nesterov) or ``g`` (no momentum), times the rate. The inner
    gradients are taken at detached copies (first order), or are the given constants ``grads``."""
    rate, mu, nesterov = hand
    p = dict(params)
    names = list(p)
    vel = [torch.zeros_like(p[n]) for n in names]
    used = []
    for k in range(steps):
        if grads is None:
            with torch.enable_grad():
                leaves = {n: v.detach().requires_grad_() for n, v in p.items()}
                out = torch.func.functional_call(model, leaves, (x,))
                g = list(torch.autograd.grad(F.cross_entropy(out, y), list(leaves.values())))
        else:
            g = grads[k]
        used.append(g)
        for i, n in enumerate(names):
            d = g[i]
            if mu is not None:
                vel[i] = mu * vel[i] + g[i]
                d = g[i] + mu * vel[i] if nesterov else vel[i]
            p[n] = p[n] - rate(i, k) * d
    return p, used


def _torch_sgd(model: nn.Module, x: Tensor, y: Tensor, steps: int, lr: float, momentum: float, nesterov: bool) -> dict[str, Tensor]:
    m = copy.deepcopy(model)
    opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum, nesterov=nesterov)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    return {n: v.detach() for n, v in m.named_parameters()}


# -- the steps ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(RULES))
def test_steps_match_the_rule_written_by_hand(name):
    torch.manual_seed(0)
    model = TinyConvBN().to(D64)
    params = dict(model.named_parameters())
    rule = _rule(name, params)
    sx, sy, _, _ = (t[0] for t in _data())
    traj = inner_loop(FunctionalModel(model), params, sx, sy, F.cross_entropy, steps=STEPS, update=rule,
                      adapt=list(params), create_graph=False)
    with torch.no_grad():
        hand = RULES[name][1](rule)
        expected, _ = _by_hand(model, {n: v.detach() for n, v in params.items()}, sx, sy, STEPS, hand)
    for n in params:
        assert torch.allclose(traj[-1][n], expected[n], rtol=1e-12, atol=1e-14), n
    if name in TORCH_SGD:  # and against an implementation that is not ours
        reference = _torch_sgd(model, sx, sy, STEPS, *TORCH_SGD[name])
        for n in params:
            assert torch.allclose(traj[-1][n], reference[n], rtol=1e-12, atol=1e-14), n
    assert not torch.equal(traj[-1]["head.weight"], params["head.weight"])


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.0, 0.999)])
def test_adam_steps_match_torch_optim_adam(betas):
    torch.manual_seed(0)
    model = TinyConvBN().to(D64)
    params = dict(model.named_parameters())
    sx, sy, _, _ = (t[0] for t in _data())
    traj = inner_loop(FunctionalModel(model), params, sx, sy, F.cross_entropy, steps=4,
                      update=Adam(0.05, betas=betas, eps=1e-6), adapt=list(params), create_graph=False)
    m = copy.deepcopy(model)
    opt = torch.optim.Adam(m.parameters(), lr=0.05, betas=betas, eps=1e-6)
    for _ in range(4):
        opt.zero_grad()
        F.cross_entropy(m(sx), sy).backward()
        opt.step()
    for n, p in m.named_parameters():
        assert torch.allclose(traj[-1][n], p.detach(), rtol=1e-12, atol=1e-14), n
    assert not torch.allclose(traj[-1]["head.weight"], params["head.weight"], atol=1e-2)


def test_adams_step_count_is_an_integer_whatever_the_parameters_dtype():
    """A bfloat16 counter would stop at 256; the count stays exact, the corrections follow it."""
    p = {"w": torch.ones(3, dtype=torch.bfloat16)}
    rule = Adam(0.01, betas=(0.9, 0.999))
    state = rule.init(p)
    for k in range(300):
        p, state = rule.update({"w": torch.ones(3, dtype=torch.bfloat16)}, state, p, k)
    assert state["adam/step"].dtype == torch.int64 and int(state["adam/step"]) == 300
    assert p["w"].dtype == torch.bfloat16 and state["adam/m/w"].dtype == torch.bfloat16


def test_a_carried_adam_state_continues_one_adam_run_across_tasks():
    """Task B adapted from the state task A left = torch.optim.Adam kept across both tasks, the
    weights set back to the initialisation between them (Reptile's published inner loop)."""
    torch.manual_seed(0)
    model = TinyConvBN().to(D64)
    params = dict(model.named_parameters())
    sx, sy, _, _ = _data(tasks=2)
    rule = Adam(0.05, betas=(0.0, 0.999))
    fm, names = FunctionalModel(model), list(params)
    _, after_a = inner_loop(fm, params, sx[0], sy[0], F.cross_entropy, steps=3, update=rule, adapt=names,
                            create_graph=False, return_state=True)
    traj_b, after_b = inner_loop(fm, params, sx[1], sy[1], F.cross_entropy, steps=3, update=rule, adapt=names,
                                 create_graph=False, state=after_a, return_state=True)
    assert float(after_a["adam/step"]) == 3 and float(after_b["adam/step"]) == 6
    m = copy.deepcopy(model)
    opt = torch.optim.Adam(m.parameters(), lr=0.05, betas=(0.0, 0.999))
    for task in (0, 1):
        with torch.no_grad():
            for n, p in m.named_parameters():
                p.copy_(params[n])
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(m(sx[task]), sy[task]).backward()
            opt.step()
    for n, p in m.named_parameters():
        assert torch.allclose(traj_b[-1][n], p.detach(), rtol=1e-12, atol=1e-14), n
    fresh = inner_loop(fm, params, sx[1], sy[1], F.cross_entropy, steps=3, update=rule, adapt=names, create_graph=False)
    assert not torch.allclose(fresh[-1]["head.weight"], traj_b[-1]["head.weight"])  # the carried state matters


def test_adam_first_order_meta_gradient_is_the_query_gradient_at_the_adapted_weights():
    """First order, the inner gradients (so Adam's moments) are constants: theta_K = theta_0 + const."""
    torch.manual_seed(2)
    model = TinyConvBN().to(D64)
    rule = Adam(0.05, betas=(0.9, 0.99))
    data = _data(seed=2)
    params = dict(model.named_parameters())
    ours = torch.autograd.grad(_meta_loss(model, rule, data, first_order=True), list(params.values()))
    sx, sy, qx, qy = data
    fm = FunctionalModel(model)
    total = 0
    for b in range(sx.shape[0]):
        adapted = inner_loop(fm, params, sx[b], sy[b], F.cross_entropy, steps=STEPS, update=rule, adapt=list(params),
                             create_graph=False)[-1]
        at = {n: v.requires_grad_() for n, v in adapted.items()}
        g = torch.autograd.grad(F.cross_entropy(fm(at, qx[b]), qy[b]), list(at.values()))
        total = total + _flat(g) / sx.shape[0]
    assert _rel_err(_flat(ours), total) < 1e-12


# -- meta-gradients ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(BUILD))
def test_second_order_meta_gradient_matches_finite_differences(name, finite_differences):
    """Through BatchNorm, three steps, w.r.t. the weights and every learned hyper-parameter."""
    torch.manual_seed(1)
    model = TinyConvBN().to(D64)
    rule = _rule(name, dict(model.named_parameters()), seed=1)
    data = _data(seed=1)
    wrt = _wrt(model, rule)
    grads = _flat(torch.autograd.grad(_meta_loss(model, rule, data), wrt))
    fd = finite_differences(lambda: float(_meta_loss(model, rule, data)), wrt)
    assert _rel_err(grads, fd) < 1e-7
    for h in rule.parameters():  # every learned hyper-parameter has a say
        assert torch.count_nonzero(torch.autograd.grad(_meta_loss(model, rule, data), h)[0]) > 0


@pytest.mark.parametrize("name", list(RULES))
def test_first_order_meta_gradient_matches_a_hand_unrolled_one(name):
    """First order: the inner gradients are constants; the meta-gradient is that of the query loss
    at ``theta_K(theta, hyper-parameters)`` with those constants, unrolled by hand."""
    torch.manual_seed(2)
    model = TinyConvBN().to(D64)
    rule = _rule(name, dict(model.named_parameters()), seed=2)
    data = _data(seed=2)
    wrt = _wrt(model, rule)
    ours = torch.autograd.grad(_meta_loss(model, rule, data, first_order=True), wrt)

    sx, sy, qx, qy = data
    params = dict(model.named_parameters())
    hand = RULES[name][1](rule)
    total = 0
    for b in range(sx.shape[0]):
        _, grads = _by_hand(model, params, sx[b], sy[b], STEPS, hand)
        adapted, _ = _by_hand(model, params, sx[b], sy[b], STEPS, hand, grads=grads)
        total = total + F.cross_entropy(torch.func.functional_call(model, adapted, (qx[b],)), qy[b])
    expected = torch.autograd.grad(total / sx.shape[0], wrt)
    assert _rel_err(_flat(ours), _flat(expected)) < 1e-12
    second = torch.autograd.grad(_meta_loss(model, rule, data), wrt)
    assert _rel_err(_flat(ours), _flat(second)) > 1e-3  # not the second-order one


@pytest.mark.parametrize("name", list(BUILD))
def test_recomputed_steps_give_the_same_meta_gradient_with_less_memory(name, saved_bytes):
    torch.manual_seed(3)
    model = TinyConvBN().to(D64)
    rule = _rule(name, dict(model.named_parameters()), seed=3)
    data = _data(seed=3)
    with saved_bytes() as plain_saved:
        plain_loss = _meta_loss(model, rule, data)
    with saved_bytes() as ck_saved:
        ck_loss = _meta_loss(model, rule, data, checkpoint=True)
    assert ck_saved.live() < 0.6 * plain_saved.live(), (ck_saved.live(), plain_saved.live())
    wrt = _wrt(model, rule)
    plain, ck = torch.autograd.grad(plain_loss, wrt), torch.autograd.grad(ck_loss, wrt)
    assert float(ck_loss.detach()) == pytest.approx(float(plain_loss.detach()), rel=1e-14)
    assert _rel_err(_flat(ck), _flat(plain)) < 1e-12


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("name", list(BUILD))
def test_vmap_over_tasks_agrees_with_the_loop(name, first_order):
    torch.manual_seed(4)
    model = MLP(1, [6, 6], 1).to(D64)
    params = dict(model.named_parameters())
    rule = _rule(name, params, seed=4)
    g = torch.Generator().manual_seed(4)
    sx, sy, qx, qy = (torch.randn(3, 5, 1, generator=g, dtype=D64) for _ in range(4))
    fm, names = FunctionalModel(model), list(params)
    loop = sum(
        F.mse_loss(fm(inner_loop(fm, params, sx[b], sy[b], F.mse_loss, steps=STEPS, update=rule, adapt=names,
                                 first_order=first_order)[-1], qx[b]), qy[b])
        for b in range(3)
    ) / 3
    run = inner_loop_vmap(fm, params, sx, sy, F.mse_loss, steps=STEPS, update=rule, adapt=names, first_order=first_order)
    vm = run(lambda traj, x, y: F.mse_loss(fm(traj[-1], x), y))(qx, qy).mean()
    wrt = _wrt(model, rule)
    assert float(vm.detach()) == pytest.approx(float(loop.detach()), rel=1e-12)
    assert _rel_err(_flat(torch.autograd.grad(vm, wrt)), _flat(torch.autograd.grad(loop, wrt))) < 1e-10


# -- the interface -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(BUILD))
def test_update_is_pure(name):
    """``update`` changes none of its arguments and gives the same result twice."""
    torch.manual_seed(5)
    params = {"w": torch.randn(3, 2, dtype=D64), "b": torch.randn(3, dtype=D64)}
    grads = {n: torch.randn_like(p) for n, p in params.items()}
    rule = _rule(name, params, seed=5)
    state = rule.init(params)
    arguments = [*params.values(), *grads.values(), *state.values()]
    before = [t.detach().clone() for t in arguments]
    first, state1 = rule.update(grads, state, params, 0)
    second, _ = rule.update(grads, state, params, 0)
    for t, b in zip(arguments, before):
        assert torch.equal(t, b)
    for n in params:
        assert torch.equal(first[n], second[n]) and not torch.equal(first[n], params[n])
    assert set(state1) == set(state)  # the state keeps its entries from step to step


def test_learned_hyper_parameters_are_registered_parameters():
    params = {"w": torch.zeros(3, 2), "b": torch.zeros(3)}
    assert [n for n, _ in SGD(0.1).named_parameters()] == []
    lslr = LayerStepSGD(params, steps=4, lr=0.1)
    assert [(n, tuple(p.shape)) for n, p in lslr.named_parameters()] == [("lrs.0", (4,)), ("lrs.1", (4,))]
    element = ElementSGD(params, lr=0.1)
    assert [(n, tuple(p.shape)) for n, p in element.named_parameters()] == [("lrs.0", (3, 2)), ("lrs.1", (3,))]
    assert all(torch.all(p == 0.1) for p in element.parameters())
    learned = Momentum(ElementSGD(params, lr=0.1), 0.5, learn=True)
    assert [n for n, _ in learned.named_parameters()] == ["momentum", "base.lrs.0", "base.lrs.1"]
    assert [n for n, _ in Momentum(SGD(0.1), 0.5).named_parameters()] == []
    assert sorted(learned.init(params)) == ["lr/b", "lr/w", "momentum", "velocity/b", "velocity/w"]


def test_errors():
    params = {"w": torch.zeros(2)}
    with pytest.raises(ValueError, match=r"betas=\(0.9, 1.0\) must each be in \[0, 1\)"):
        Adam(0.1, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match=r"betas=0.9 must be a pair \(b1, b2\)"):
        Adam(0.1, betas=0.9)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"eps=0 must be > 0 \(with 0, a weight whose gradient has been 0 so far gets 0/0\)"):
        Adam(0.1, eps=0)
    with pytest.raises(ValueError, match=r"Adam needs at least one parameter to adapt; got none"):
        Adam(0.1).init({})
    with pytest.raises(ValueError, match=r"lr='0.1' must be a finite number"):
        SGD("0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"lr=nan must be a finite number"):
        ElementSGD(params, float("nan"))
    with pytest.raises(ValueError, match=r"momentum=inf must be a finite number"):
        Momentum(SGD(0.1), float("inf"))
    with pytest.raises(ValueError, match=r"steps=0 must be an int >= 1 \(one learned rate per step\)"):
        LayerStepSGD(params, steps=0, lr=0.1)
    with pytest.raises(ValueError, match=r"ElementSGD needs at least one parameter to adapt; got none"):
        ElementSGD({}, lr=0.1)
    with pytest.raises(ValueError, match=r"LayerStepSGD was built for the parameters \['w'\] but init\(\) got \['v'\]; "
                                         r"build it from the parameters the inner loop adapts"):
        LayerStepSGD(params, steps=1, lr=0.1).init({"v": torch.zeros(2)})
    with pytest.raises(TypeError, match=r"base must be an InnerUpdate \(e.g. SGD\(lr\)\), got float"):
        Momentum(0.1, 0.9)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Momentum: the base rule's state already has the entries \['velocity/w'\]"):
        Momentum(Momentum(SGD(0.1), 0.5), 0.5).init(params)
    with pytest.raises(TypeError, match=r"SGD is an inner update rule: call its init\(\) and update\(\), not the module"):
        SGD(0.1)(params)
    with pytest.raises(TypeError, match=r"update must be an InnerUpdate \(metakit.algorithms.inner_updates, e.g. SGD\(lr\)\), got float"):
        model = nn.Linear(2, 1)
        inner_loop(FunctionalModel(model), dict(model.named_parameters()), torch.zeros(3, 2), torch.zeros(3, 1),
                   F.mse_loss, steps=1, update=0.1, adapt=["weight"])  # type: ignore[arg-type]
