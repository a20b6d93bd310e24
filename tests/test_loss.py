"""The fast loss equals the dense reference in value and gradient."""

import pytest
import torch

import hsae.model.constraint as constraint_mod
import hsae.model.kernel as kernel_mod
from hsae.model import HSAE, hsae_loss
from hsae.model.constraint import _divmod, _sort, flat_nonzero, sibling_cross, sibling_groups, support_entries
from hsae.model.couple import coupled_decodes
from hsae.model.jumprelu import jumprelu_l0
from reference import dense_loss


def _case(seed, sizes=(4, 10, 24), d=8, big_family=False):
    torch.manual_seed(seed)
    m = HSAE(d, list(sizes), threshold_init=0.3, seed=seed).double()
    with torch.no_grad():
        for lv in m.levels:
            lv.W_enc.add_(0.3 * torch.randn_like(lv.W_enc))
            lv.b_enc.normal_(0, 0.2)
            lv.b_dec.normal_(0, 0.2)
            lv.log_threshold.add_(0.5 * torch.randn_like(lv.log_threshold))
    m.normalize_decoder()
    g = torch.Generator().manual_seed(seed)
    for l in range(1, len(sizes)):
        p = torch.randint(-1, sizes[l - 1], (sizes[l],), generator=g)
        if big_family:
            p[: sizes[l] // 2] = 0  # one parent with many children
        m.set_parent(l, p)
    x = torch.randn(32, d, dtype=torch.float64, generator=g) * 1.5
    swap = [torch.rand(n, generator=g) < 0.4 for n in sizes[:-1]] + [None]
    return m, x, swap


@pytest.fixture(params=["kernel", "kernel-hubs", "torch"])
def form(request, monkeypatch):
    """Each test runs both forms of the couplings on the CPU: model/kernel.py's compiled loops, and
    the torch form that CUDA runs; the loops once more with every family of over two children
    summing its groups' rows, as a hub parent's do, beside the sibling Gram of the others."""
    monkeypatch.setattr(kernel_mod, "ENABLED", request.param != "torch")
    if request.param == "kernel-hubs":
        monkeypatch.setattr(kernel_mod, "GRAM_FAMILY", 2)
    return request.param


def _grads(m, loss):
    m.zero_grad()
    loss.backward()
    m.remove_parallel_grad()  # the dense loss's extra gradient lies along each decoder row
    return {k: p.grad.clone() for k, p in m.named_parameters()}


@pytest.mark.parametrize("seed,big,sizes", [(0, False, (4, 10, 24)), (1, False, (4, 10, 24)), (2, True, (4, 10, 24)),
                                            (3, True, (4, 10, 24)), (4, False, (8, 16, 40))])
def test_fast_loss_matches_dense(seed, big, sizes, form):
    """(8, 16, 40): every level's JumpReLU runs model/kernel.py's loop too (rows of whole words)."""
    m, x, swap = _case(seed, sizes, big_family=big)
    lam, rho, bw = [0.1, 0.2, 0.3], 0.7, 0.2  # wide bandwidth: many entries in the kernel
    fast = hsae_loss(m, x, lam, rho, swap=swap, bandwidth=bw)
    dense = dense_loss(m, x, lam, rho, swap=swap, bandwidth=bw)
    assert fast.loss.item() == pytest.approx(dense.item(), rel=1e-10)
    gf, gd = _grads(m, fast.loss), _grads(m, dense)
    for k in gf:
        assert torch.allclose(gf[k], gd[k], rtol=1e-8, atol=1e-10), k
    # The threshold gradient is not trivially zero: the kernel region is exercised.
    assert gf["levels.1.log_threshold"].abs().sum() > 0


def test_baseline_loss_is_independent_levels(form):
    m, x, _ = _case(5)
    out = hsae_loss(m, x, [0.1] * 3, rho=0.0, swap=None, bandwidth=0.1)
    for l in range(1, 3):
        m.set_parent(l, torch.full_like(m.parent(l), -1))
    assert out.loss.item() == pytest.approx(dense_loss(m, x, [0.1] * 3, 0.0, bandwidth=0.1).item(), rel=1e-10)


@pytest.mark.parametrize("chunked", [False, True])
def test_coupled_node_gradcheck_with_chunks(monkeypatch, chunked, form):
    """The one node's hand-written backward (decodes, swaps, constraints) is the exact gradient,
    with what the forward keeps for it, and when every constraint loop runs in several chunks.
    The activations enter through their supports, as the JumpReLU passes them on: the compiled
    loops give their gradient on the supports only."""
    if chunked:
        monkeypatch.setattr(constraint_mod, "_CHUNK_FLOATS", 16)
    g = torch.Generator().manual_seed(0)
    B, n, d = 6, (4, 12, 20), 5
    parents = [None, torch.tensor([0, 0, 0, 1, 1, -1, 2, 2, 2, 2, -1, 0]),  # parent 3 has no child
               torch.randint(-1, 12, (20,), generator=g)]
    acts = [torch.randn(B, k, dtype=torch.float64, generator=g).relu().requires_grad_() for k in n]
    supports = [(a > 0) | (torch.rand(a.shape, generator=g) < 0.2) for a in acts]  # some only in the kernel
    W = [torch.randn(k, d, dtype=torch.float64, generator=g, requires_grad=True) for k in n]
    b = [torch.randn(d, dtype=torch.float64, generator=g, requires_grad=True) for _ in n]
    swap = [torch.tensor([True, False, True, True]), torch.rand(12, generator=g) < 0.5, None]

    def f(*t):
        acts = [a * s for a, s in zip(t[:3], supports)]
        entries = [support_entries(s, a) for s, a in zip(supports, acts)]
        # the loops take the activations at the entries as jumprelu_l0 passes them on, with their gradient
        entries = [(f, v if v is None else a.reshape(-1).take(f)) for (f, v), a in zip(entries, acts)]
        outs, cons = coupled_decodes(acts, list(t[3:6]), list(t[6:]), parents, entries, swap, 1.0, torch.float64)
        assert len(cons) == 2
        return (*outs, *cons)

    assert torch.autograd.gradcheck(f, (*acts, *W, *b))


def test_sibling_cross_is_the_sum_over_same_group_pairs(monkeypatch):
    monkeypatch.setattr(constraint_mod, "_CHUNK_FLOATS", 16)  # force several chunks
    g = torch.Generator().manual_seed(0)
    W = torch.randn(12, 5, dtype=torch.float64, generator=g)
    W = W / W.norm(dim=1, keepdim=True)  # unit-norm decoder rows, as the trainer keeps them
    group = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3])
    cols = torch.randint(0, 12, (11,), generator=g)
    vals = torch.randn(11, dtype=torch.float64, generator=g)
    ref = sum(2 * vals[i] * vals[j] * (W[cols[i]] @ W[cols[j]])
              for i in range(11) for j in range(i + 1, 11) if group[i] == group[j])
    assert sibling_cross(vals, W, cols, group).item() == pytest.approx(ref.item(), rel=1e-10)


def test_sibling_groups_keep_only_shared_keys():
    key = torch.tensor([7, 3, 7, 5, 3, 3, 9])
    idx, group = sibling_groups(key)
    assert sorted(key[idx].tolist()) == [3, 3, 3, 7, 7]
    # entries of one group are contiguous and numbered 0, 1, ...
    assert group.tolist() == [0, 0, 0, 1, 1]
    assert (key[idx][:3] == 3).all()


@pytest.mark.parametrize("n, high", [(0, 5), (1, 5), (9, 3), (30000, 40), (1000, 1 << 60)])
def test_packed_sort_is_a_stable_sort(n, high):
    """The CPU sort (positions packed into the keys' low bits) gives torch's stable sort, ties
    in input order (a group's columns stay sorted), and falls back to it for keys too large."""
    key = torch.randint(0, high, (n,), generator=torch.Generator().manual_seed(n))
    ks, order = _sort(key)
    ref = torch.sort(key, stable=True)
    assert torch.equal(ks, ref.values) and torch.equal(order, ref.indices)


def test_divmod_is_floor_division_and_remainder():
    e = torch.randint(0, 1 << 40, (1000,), generator=torch.Generator().manual_seed(0))
    for n in (1, 7, 2048):
        q, r = _divmod(e, n)
        assert torch.equal(q, e // n) and torch.equal(r, e % n)


def test_a_dead_mask_with_no_dead_feature_adds_nothing():
    """dead=[all False] is the same loss as dead=None (no ghost term), decided without a host read."""
    m, x, _ = _case(6)
    none = hsae_loss(m, x, [0.1] * 3, rho=0.0, bandwidth=0.1)
    empty = hsae_loss(m, x, [0.1] * 3, rho=0.0, bandwidth=0.1,
                      dead=[torch.zeros(lv.n, dtype=torch.bool) for lv in m.levels])
    assert empty.loss.item() == none.loss.item()


@pytest.mark.parametrize("shape", [(64, 48), (7, 9), (3, 1000), (1, 8)])
def test_flat_nonzero_is_nonzero(shape):
    """The word-by-word scan finds the same entries as nonzero, sparse or dense, aligned or not."""
    g = torch.Generator().manual_seed(0)
    for p in (0.0, 0.01, 0.5, 1.0):
        m = torch.rand(shape, generator=g) < p
        assert torch.equal(flat_nonzero(m), m.reshape(-1).nonzero().squeeze(1))
        view = m.reshape(-1)[1:]  # storage offset 1: the plain scan
        assert torch.equal(flat_nonzero(view), view.nonzero().squeeze(1))


@pytest.mark.parametrize("shape", [(64, 48), (7, 9), (3, 1000), (1, 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_support_entries_are_the_mask_entries_and_their_values(shape, dtype, form):
    """Both forms find the entries flat_nonzero finds; the compiled scan also reads the activations
    there (the torch form leaves that to the couplings), aligned to 8 bytes or not."""
    g = torch.Generator().manual_seed(1)
    for p in (0.0, 0.01, 0.5, 1.0):
        m = torch.rand(shape, generator=g) < p
        a = torch.randn(shape, generator=g, dtype=dtype) * m
        flat, vals = support_entries(m, a)
        assert torch.equal(flat, m.reshape(-1).nonzero().squeeze(1))
        if form != "torch" and m.numel() % 8 == 0:
            assert torch.equal(vals, a.reshape(-1)[flat])
        else:
            assert vals is None


@pytest.mark.parametrize("shape,above", [((64, 48), 0.1), ((5, 8), 0.1), ((300, 16), 0.1), ((200, 256), 2.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_jumprelu_is_the_torch_form(shape, above, dtype, monkeypatch):
    """model/kernel.py's JumpReLU gives torch's activations, L0, active mask, support entries and
    pre-activations' gradient exactly, and the thresholds' to rounding (its sum runs in fp64), with
    pre-activations exactly at the threshold and at both edges of its kernel, and a gradient given
    at the entries (the couplings') added to the dense one; dense supports and sparse ones (~2%,
    above = 2: most words of the mask then hold one entry, which the loop writes on its own)."""
    g = torch.Generator().manual_seed(2)
    t = torch.rand(shape[1], generator=g, dtype=dtype) + above
    eps = 0.05
    h = torch.randn(shape, generator=g, dtype=dtype)
    h[0], h[1 % shape[0]], h[2 % shape[0]] = t, t - eps / 2, t + eps / 2  # the masks' edges
    ga, gl0 = torch.randn(shape, generator=g, dtype=dtype), torch.tensor(0.7, dtype=dtype)
    gcouple = torch.randn(shape, generator=g, dtype=dtype).reshape(-1)  # read at the entries only
    out = {}
    for on in (True, False):
        monkeypatch.setattr(kernel_mod, "ENABLED", on)
        hh, tt = h.clone().requires_grad_(), t.clone().requires_grad_()
        a, l0, active, support = jumprelu_l0(hh, tt, eps, entries=True)
        if on:
            flat, vals = support
            assert torch.equal(vals, a.detach().reshape(-1)[flat])
            torch.autograd.backward([a, l0, vals], [ga, gl0, gcouple[flat]])
        else:
            flat = support_entries(support, a.detach())[0]
            torch.autograd.backward([a, l0], [ga.reshape(-1).index_add(0, flat, gcouple[flat]).view(shape), gl0])
        out[on] = (a.detach(), l0.detach(), active, flat, hh.grad, tt.grad)
    for k, (x, y) in enumerate(zip(out[True][:5], out[False][:5])):
        assert x.dtype == y.dtype and torch.equal(x, y), k
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(out[True][5], out[False][5], rtol=tol, atol=tol * out[False][5].abs().max())
    assert out[True][3].numel() > 0 and out[True][5].abs().sum() > 0
    monkeypatch.setattr(kernel_mod, "ENABLED", True)
    hh, tt = h.clone().requires_grad_(), t.clone().requires_grad_()
    a, l0, active, support = jumprelu_l0(hh, tt, eps)
    assert support is None  # no entries asked for: none found
    torch.autograd.backward([a, l0], [ga, gl0])
    assert torch.equal(hh.grad, torch.where(h > t, ga, 0.0))
