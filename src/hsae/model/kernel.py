"""The couplings' per-entry work on a CPU as compiled loops (numba), one pass each.

In torch, the constraint (model/constraint.py) is ~150 small ops per level pair (index plans, a
sort for the sibling groups, CSR products), and the swap (model/swap.py) products over whole
columns of which ~99% are zeros. Here:
- `support_entries` finds a level's support entries and reads its activations there, one scan;
- the constraint's loops walk a level pair's entries input by input, chain each input's entries
  by parent in a scratch table (a sibling group is a short chain: no sort), and do the forward's
  arithmetic, then the backward's, and each child's cosine to its parent with its gradient, row
  by row (no gathered [n, d] temporary); two siblings' dot product is computed the first time they
  co-fire in a step and looked up after, and the backward updates their rows once with the
  batch's sum (decoder-row work once per sibling pair, not once per input; hub parents, whose
  pairs are too many to list, sum their groups' rows instead);
- the swap adds one scaled decoder row per active entry of a swapped column;
- the JumpReLU's forward writes its activations and both masks in one pass, and takes the
  support entries from each row while it is in the cache (torch: seven passes and a scan); its
  backward is one pass too, and adds in the couplings' gradients at the entries row by row.
What they cost in a training step is the cache lines of the [B, n] tensors they touch, which the
step's products have evicted; so they touch as few as they can: a parent's activations come from
its own level's entries through a small per-input table, never from the [B, n_p] tensor, and the
activations' gradients go into arrays aligned with the entries, written in order, never into the
[B, n] gradients (a miss per entry; bench/RESULTS.md).

The loops run on the calling thread: numba's thread pool beside torch's OpenMP team won little
(the loops wait on memory), and more threads than cores make libgomp stop spinning between its
parallel regions (bench/RESULTS.md, the prefetch threads).
"""
from __future__ import annotations

import numpy as np
import torch

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; without it the torch form runs
    numba = None


# Tests switch this off to check the torch form, which CUDA runs, against the same references.
ENABLED = True


def on(device: torch.device) -> bool:
    """Whether the compiled loops run for tensors on this device (a CPU, numba imports, ENABLED)."""
    return ENABLED and numba is not None and device.type == "cpu"


def takes(t: torch.Tensor) -> bool:
    """Whether the loops run on t: `on` its device, in fp32 or fp64 (numba has no bf16)."""
    return on(t.device) and t.dtype in (torch.float32, torch.float64)


def view(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a contiguous CPU tensor: the loops write through it into the tensor."""
    assert t.is_contiguous()
    return t.detach().numpy()


def _njit(fn):
    # reassoc (and contract: fused multiply-adds) lets the d-long dot products vectorise, ~8x here;
    # not the rest of fastmath, which may assume no NaN: a diverging run must still show NaNs.
    # No cache=True: numba's on-disk cache is pickled, and nothing we read from disk may run code;
    # compiling the loops takes a few seconds once per process.
    return numba.njit(nogil=True, fastmath={"reassoc", "contract"})(fn) if numba is not None else fn


@_njit
def _set_bytes(x):
    """How many of an int64 word's 8 bool bytes are set (each byte 0 or 1)."""
    m = 0
    for k in range(8):
        m += (x >> (8 * k)) & 1
    return m


@_njit
def _emit(x, w, a, flat, vals, m):
    """Write word w's set bytes (x: the word) as flat indices 8 w + k with a there, from position
    m; returns the next position. Every byte's index is written and m moves on only past a set
    one: no branch to mispredict (so flat and vals need 8 spare slots)."""
    for k in range(8):
        flat[m] = 8 * w + k
        vals[m] = a[8 * w + k]
        m += (x >> (8 * k)) & 1
    return m


@_njit
def _byte(x):
    """Which byte of an int64 word with one set byte (value 1) is set: compares, no branch."""
    return ((x > 0xFF) + (x > 0xFFFF) + (x > 0xFFFFFF) + (x > 0xFFFFFFFF) + (x > 0xFFFFFFFFFF)
            + (x > 0xFFFFFFFFFFFF) + (x > 0xFFFFFFFFFFFFFF))


@_njit
def support_entries(words, a):
    """(ascending flat indices of the set bytes of a bool mask viewed as int64 words, a at them).

    A support is ~99% zero, so most words are skipped whole, and one count pass sizes the output.
    """
    m = 0
    for w in range(words.size):
        if words[w] != 0:
            m += _set_bytes(words[w])
    flat = np.empty(m + 8, np.int64)
    vals = np.empty(m + 8, a.dtype)
    m = 0
    for w in range(words.size):
        if words[w] != 0:
            m = _emit(words[w], w, a, flat, vals, m)
    return flat[:m], vals[:m]


@_njit
def jumprelu_l0(h, t, lo, hi, a, active, near, want):
    """(how many of h [B, n] exceed t, and where want the support's entries as `support_entries`
    gives them); writes a = h where h > t else 0, active = h > t, near = lo < h < hi (uint8
    [B, n] views of bool tensors; n a multiple of 8, so each row is whole words). lo, hi: t -/+
    half the bandwidth in t's dtype, as torch rounds them, so the masks are torch's bit for bit."""
    B, n = h.shape
    wa = active.reshape(-1).view(np.int64)
    wn = near.reshape(-1).view(np.int64)
    af = a.reshape(-1)
    nw = n // 8
    # room for 1 in 8 (a support is ~1%): pages are only touched as they fill, and a grow copies
    flat = np.empty(B * n // 8 + 8 if want else 0, np.int64)
    vals = np.empty(flat.size, h.dtype)
    cnt = 0
    m = 0
    wz = np.empty(nw, np.int64)  # the row's nonzero words
    for b in range(B):
        rs = 0
        for j in range(n):  # vectorised: no branch
            x = h[b, j]
            ac = x > t[j]
            nr = (x > lo[j]) & (x < hi[j])
            a[b, j] = x if ac else 0.0
            active[b, j] = ac
            near[b, j] = nr
            cnt += ac
            rs += ac | nr
        if not want:
            continue
        if m + rs + 8 > flat.size:  # grow by doubling: a few times per call at most
            k = max(2 * flat.size, m + rs + 8)
            f2 = np.empty(k, np.int64)
            v2 = np.empty(k, h.dtype)
            f2[:m] = flat[:m]
            v2[:m] = vals[:m]
            flat = f2
            vals = v2
        k = 0
        for w in range(b * nw, (b + 1) * nw):  # the row's words from the cache, listed without a branch
            wz[k] = w
            k += (wa[w] | wn[w]) != 0
        for i in range(k):
            w = wz[i]
            x = wa[w] | wn[w]
            if x & (x - 1) == 0:  # one set byte, most words of a sparse row: one slot, not eight
                j = 8 * w + _byte(x)
                flat[m] = j
                vals[m] = af[j]
                m += 1
            else:
                m = _emit(x, w, af, flat, vals, m)
    return cnt, flat[:m], vals[:m]


@_njit
def jumprelu_backward(ga, gv, flat, active, near, t, c0a, eps, gh, gt):
    """The gradients of `jumprelu_l0`'s outputs, one pass: gh = g where active, else 0, and
    gt[j] = -(1 / eps) sum over the rows where near of (t[j] g + c0a[0]), where g is
    ga [B, n] (the dense gradient of a) plus, at the support entries flat, gv (their gradient as
    entries, e.g. from the couplings: added in the row's pass). c0a: the L0's gradient
    over B, a 1-element array (no host read)."""
    B, n = ga.shape
    c0 = c0a[0]
    acc = np.zeros(n, np.float64)  # 1024 rows summed in fp32 would drift; torch's sum keeps more too
    # The row's entries are spread into a dense scratch row first, with scalar stores, and read
    # back by the vectorised pass. Added into gh and acc after that pass instead, each a scalar
    # read-modify-write right after its vector stores, they took twice as long (bench/RESULTS.md;
    # a store-forwarding stall, likely).
    row = np.zeros(n, ga.dtype)
    e = 0
    for b in range(B):
        e1 = _run_end(flat, e, n, b)
        for q in range(e, e1):
            row[flat[q] - b * n] = gv[q]
        for j in range(n):  # vectorised: no branch
            g = ga[b, j] + row[j]
            gh[b, j] = g if active[b, j] else 0.0
            acc[j] += (t[j] * g + c0) if near[b, j] else 0.0
        for q in range(e, e1):  # scalar stores again, not a vector fill
            row[flat[q] - b * n] = 0.0
        e = e1
    for j in range(n):
        gt[j] = -acc[j] / eps


@_njit
def _tables(par, n_p, dtype):
    """(parent with an orphan's as the spare parent n_p, int32: small tables stay in L1; 1 where a
    parent is set)."""
    px = np.where(par >= 0, par, n_p).astype(np.int32)
    keep = (par >= 0).astype(dtype)
    return px, keep


@_njit
def _group(flat, vals, k, base, nxt, keep, W, V):
    """V = sum over the chain from entry k of v_e W[c_e]; returns sum_e v_e^2."""
    V[:] = 0.0
    sq = 0.0
    while k >= 0:
        c = flat[k] - base
        v = vals[k] * keep[c]
        if v != 0.0:
            for j in range(V.size):
                V[j] += v * W[c, j]
            sq += v * v
        k = nxt[k]
    return sq


@_njit
def _sq(V):
    t = 0.0
    for j in range(V.size):
        t += V[j] * V[j]
    return t


@_njit
def _run_end(flat, e0, n, r):
    """End of input r's run of entries in ascending flat [B * n] indices, from e0 (it may be empty):
    an input's entries are contiguous."""
    end = (r + 1) * n
    e1 = e0
    while e1 < flat.size and flat[e1] < end:
        e1 += 1
    return e1


@_njit
def _cosines(W_p, W, par, s):
    """s[c] = W_p[par[c]] . W[c] (0 for an orphan)."""
    for c in range(W.shape[0]):
        p = par[c]
        t = 0.0
        if p >= 0:
            for j in range(W.shape[1]):
                t += W_p[p, j] * W[c, j]
        s[c] = t


@_njit
def _families_backward(ds, M, g2, start, kids, rank, b0, pos, W_p, W, gW_p, gW):
    """Add into gW_p and gW the gradient of sum_c ds[c] s[c] (`_cosines`) and of the sibling Gram's
    pairs, g2 M[u] (w_c . w_c') for pair u (`_gram_backward`'s sums), family by family (`_siblings`'
    start, kids): a parent's rows and its children's stay in L1 while each child's gradient row is
    updated once (child by child and pair by pair, more rows came from L3: bench/RESULTS.md)."""
    for p in range(start.size - 1):
        for i in range(start[p], start[p + 1]):
            c = kids[i]
            v = ds[c]
            if v != 0.0:
                for x in range(W.shape[1]):
                    gW[c, x] += v * W_p[p, x]
                    gW_p[p, x] += v * W[c, x]
            if b0[p] < 0:  # a hub family: its groups updated their rows themselves
                continue
            for i2 in range(start[p], start[p + 1]):  # d/dw_c of v v' (w_c . w_c'): v v' w_c'
                c2 = kids[i2]
                u = pos[_slot(c, c2, rank, b0[p])] - 1 if i2 != i else -1
                m = g2 * M[u] if u >= 0 else 0.0
                if m != 0.0:
                    for x in range(W.shape[1]):
                        gW[c, x] += m * W[c2, x]


# Families of at most this many children take their sibling terms from a Gram of decoder-row dots,
# filled as pairs first co-fire; larger ones (hub parents) sum their groups' rows (`_group`).
GRAM_FAMILY = 16


@_njit
def _siblings(par, n_p, K):
    """(the families: start [n_p + 1] and kids, each parent's children ascending from start[p];
    each child's rank, its place in its family; each parent's first Gram slot, -1 for a family of
    more than K children; the number of slots: one per pair of siblings)."""
    start = np.zeros(n_p + 1, np.int64)
    for c in range(par.size):
        if par[c] >= 0:
            start[par[c] + 1] += 1
    for p in range(n_p):
        start[p + 1] += start[p]
    kids = np.empty(start[n_p], np.int64)
    rank = np.zeros(par.size, np.int64)
    fill = start[:n_p].copy()
    for c in range(par.size):
        p = par[c]
        if p >= 0:
            kids[fill[p]] = c
            rank[c] = fill[p] - start[p]
            fill[p] += 1
    b0 = np.empty(n_p, np.int64)
    S = 0
    for p in range(n_p):
        k = start[p + 1] - start[p]
        b0[p] = S if k <= K else -1
        S += k * (k - 1) // 2 if k <= K else 0
    return start, kids, rank, b0, S


@_njit
def _slot(c1, c2, rank, b0):
    """The Gram slot of siblings c1 != c2 (their parent's first slot b0)."""
    lo = min(rank[c1], rank[c2])
    hi = max(rank[c1], rank[c2])
    return b0 + hi * (hi - 1) // 2 + lo


@_njit
def _gram_cross(flat, vals, h, base, nxt, keep, W, rank, b0, pos, G, cnt):
    """sum over the pairs e != e' of the group chained from h of v_e v_e' (w_c . w_c'), each dot taken
    from the Gram (slot -> pos: its place + 1 in G; 0 until the pair first co-fires, when it
    is computed: once per step, not once per input)."""
    t = 0.0
    i = h
    while i >= 0:
        ci = flat[i] - base
        vi = vals[i] * keep[ci]
        j = nxt[i]
        while j >= 0:
            cj = flat[j] - base
            k = _slot(ci, cj, rank, b0)
            if pos[k] == 0:
                u = cnt[0]
                cnt[0] = u + 1
                pos[k] = u + 1
                d = 0.0
                for x in range(W.shape[1]):
                    d += W[ci, x] * W[cj, x]
                G[u] = d
            t += 2.0 * vi * vals[j] * keep[cj] * G[pos[k] - 1]
            j = nxt[j]
        i = nxt[i]
    return t


@_njit
def constraint_forward(fc, vc, n_c, fp, vp, n_p, par, W_p, W, s, ap, K):
    """(t1, t2, t3) of model/constraint.py's docstring summed over the batch: sum of a_p^2 over parents with a child,
    sum over child entries of a_p a_c s_c, and sum over (input, parent) groups of
    ||sum_e a_e w_e||^2 (a lone child's counted as a^2: unit-norm rows). ap[e] receives each child
    entry's parent activation, for the backward.

    fc, vc / fp, vp: the child / parent level's support entries and activations there
    (`support_entries`); par [n_c] int64 (-1: none); W_p [n_p, d], W [n_c, d]: the
    levels' decoder rows; s [n_c] receives each child's cosine to its parent. An input's parent activations are
    spread into a small table first: a lookup there is a cache hit, a lookup in the [B, n_p]
    activations a miss, and the misses are the cost. K: `GRAM_FAMILY`. Also returns the sibling
    Gram the step filled with the families and slot tables (`_siblings`, `_gram_cross`), for the
    backward.
    """
    _cosines(W_p, W, par, s)
    start, kids, rank, b0, S = _siblings(par, n_p, K)
    pos = np.zeros(S, np.int64)
    G = np.empty(S, np.float64)
    cnt = np.zeros(1, np.int64)
    px, keep = _tables(par, n_p, vc.dtype)
    head = np.full(n_p + 1, -1, np.int64)  # n_p: the spare parent of every orphan, never a group
    tbl = np.zeros(n_p + 1, vc.dtype)  # tbl[n_p] = 0: an orphan's parent activation
    nxt = np.empty(fc.size, np.int64)
    grp = np.empty(n_c, np.int64)  # an input's groups of two or more, by parent (an orphan's n_p: none)
    V = np.empty(W.shape[1], W.dtype)
    t1 = 0.0
    t2 = 0.0
    t3 = 0.0
    r = 0
    for q in range(fp.size):
        while fp[q] >= (r + 1) * n_p:  # rows ascend: no division per entry (an int64 one is ~10x an add)
            r += 1
        col = fp[q] - r * n_p
        if start[col + 1] > start[col]:  # the parent has a child
            t1 += vp[q] * vp[q]
    e0 = 0
    q0 = 0
    while e0 < fc.size:
        r = fc[e0] // n_c
        e1 = _run_end(fc, e0, n_c, r)
        while q0 < fp.size and fp[q0] < r * n_p:
            q0 += 1
        q1 = _run_end(fp, q0, n_p, r)
        for q in range(q0, q1):
            tbl[fp[q] - r * n_p] = vp[q]
        base = r * n_c
        ng = 0
        for e in range(e0, e1):
            c = fc[e] - base
            v = vc[e] * keep[c]
            p = px[c]
            ap[e] = tbl[p]
            t2 += ap[e] * v * s[c]
            t3 += v * v
            h = head[p]  # chain e into its parent's group (head: its last entry, nxt: the one before)
            h = h if h >= e0 else -1  # a head below e0 is an earlier input's: no pass resets the table
            nxt[e] = h
            head[p] = e
            if h >= 0 and nxt[h] < 0 and p < n_p:  # a group's second entry (rare: a predicted branch)
                grp[ng] = p
                ng += 1
        for i in range(ng):  # groups of two or more
            p = grp[i]
            if b0[p] >= 0:
                t3 += _gram_cross(fc, vc, head[p], base, nxt, keep, W, rank, b0[p], pos, G, cnt)
            else:  # ||V||^2 in place of its entries' a^2
                sq = _group(fc, vc, head[p], base, nxt, keep, W, V)
                t3 += _sq(V) - sq
        for q in range(q0, q1):
            tbl[fp[q] - r * n_p] = 0.0
        e0 = e1
        q0 = q1
    u = cnt[0]
    return t1, t2, t3, start, kids, rank, b0, pos, G[:u]


@_njit
def constraint_backward(fc, vc, ap, n_c, fp, vp, n_p, par, s, W_p, W, g2a, gv_c, gv_p, gW_p, gW,
                        start, kids, rank, b0, pos, G):
    """Add g2a[0] / 2 times the gradient of t1 - 2 t2 + t3 (see `constraint_forward`, whose s and ap
    it takes) into gv_c and gv_p, the activations' gradients at the levels' support entries (one per
    entry of fc / fp: written in order, where the [B, n] gradients would be a cache miss per
    entry; `jumprelu_backward` adds them in), gW_p [n_p, d] and gW [n_c, d], in place. g2a: a
    1-element array (a tensor's view: no host read of the loss's gradient). An input's parent
    gradients are summed in a small table and added to gv_p once per parent entry. start, kids,
    rank, b0, pos, G: `constraint_forward`'s families and sibling Gram; each of the Gram's pairs adds into its two decoder rows'
    gradients once, with the batch's sum of its v v' (`_families_backward`)."""
    g2 = g2a[0]
    M = np.zeros(G.size, np.float64)
    px, keep = _tables(par, n_p, vc.dtype)
    head = np.full(n_p + 1, -1, np.int64)
    tbl = np.zeros(n_p + 1, gv_p.dtype)  # an orphan's sum goes to tbl[n_p], never read
    nxt = np.empty(fc.size, np.int64)
    grp = np.empty(n_c, np.int64)  # an input's groups of two or more, by parent (an orphan's n_p: none)
    V = np.empty(W.shape[1], W.dtype)
    ds = np.zeros(n_c, W.dtype)  # the cosines' gradient
    e0 = 0
    q0 = 0
    while q0 < fp.size or e0 < fc.size:
        # the next input with a child or a parent entry
        r = fc[e0] // n_c if e0 < fc.size else fp[q0] // n_p
        if q0 < fp.size:
            r = min(r, fp[q0] // n_p)
        e1 = _run_end(fc, e0, n_c, r)
        q1 = _run_end(fp, q0, n_p, r)
        base = r * n_c
        ng = 0
        for e in range(e0, e1):  # every entry as if alone in its group: d/da = 2 a - 2 a_p s
            c = fc[e] - base
            v = vc[e] * keep[c]
            p = px[c]
            gv_c[e] += g2 * keep[c] * (v - ap[e] * s[c])
            tbl[p] -= g2 * v * s[c]
            ds[c] -= g2 * ap[e] * v
            h = head[p]  # chain e into its parent's group (head: its last entry, nxt: the one before)
            h = h if h >= e0 else -1  # a head below e0 is an earlier input's: no pass resets the table
            nxt[e] = h
            head[p] = e
            if h >= 0 and nxt[h] < 0 and p < n_p:  # a group's second entry (rare: a predicted branch)
                grp[ng] = p
                ng += 1
        for i in range(ng):
            p = grp[i]
            if b0[p] >= 0:
                _gram_backward(fc, vc, head[p], base, nxt, keep, rank, b0[p], pos, G, M, g2, gv_c)
            else:
                _group_backward(fc, vc, head[p], base, nxt, keep, W, V, g2, gv_c, gW)
        for q in range(q0, q1):  # t1's gradient (2 a_p where the parent has a child) and the table's sums
            col = fp[q] - r * n_p
            gv_p[q] += tbl[col] + (g2 * vp[q] if start[col + 1] > start[col] else 0.0)
        for e in range(e0, e1):
            tbl[px[fc[e] - base]] = 0.0
        e0 = e1
        q0 = q1
    _families_backward(ds, M, g2, start, kids, rank, b0, pos, W_p, W, gW_p, gW)


@_njit
def _gram_backward(flat, vals, h, base, nxt, keep, rank, b0, pos, G, M, g2, gv):
    """`_gram_cross`'s gradient in the group's entries, g2 v' (w_c . w_c') each, and the pairs' v v'
    summed into M for the rows' gradient."""
    i = h
    while i >= 0:
        ci = flat[i] - base
        vi = vals[i] * keep[ci]
        j = nxt[i]
        while j >= 0:
            cj = flat[j] - base
            vj = vals[j] * keep[cj]
            u = pos[_slot(ci, cj, rank, b0)] - 1
            gv[i] += g2 * vj * G[u]
            gv[j] += g2 * vi * G[u]
            M[u] += vi * vj
            j = nxt[j]
        i = nxt[i]


@_njit
def _group_backward(flat, vals, h, base, nxt, keep, W, V, g2, gv, gW):
    """A group's part beyond its entries' own: d/da_k = 2 (w_k . V - a_k), d/dw_k = 2 a_k V."""
    _group(flat, vals, h, base, nxt, keep, W, V)
    k = h
    while k >= 0:
        ck = flat[k] - base
        vk = vals[k] * keep[ck]
        u = 0.0
        for j in range(V.size):
            u += W[ck, j] * V[j]
        gv[k] += g2 * (u - vk)
        if vk != 0.0:
            for j in range(V.size):
                gW[ck, j] += g2 * vk * V[j]
        k = nxt[k]


@_njit
def swap_columns(par, swap):
    """(bool [n_c]: the children of a swapped parent, bool [n_p]: the swapped parents with a child)
    from the child level's parents par [n_c] (-1: none) and the swap mask [n_p]."""
    child = np.zeros(par.size, np.bool_)
    parent = np.zeros(swap.size, np.bool_)
    for c in range(par.size):
        p = par[c]
        if p >= 0 and swap[p]:
            child[c] = True
            parent[p] = True
    return child, parent


@_njit
def swap_forward(flat, vals, n, on, W, y, sign):
    """y[b] += sign * a[b, c] W[c] for every support entry (b, c) whose column c is on; returns those
    entries' positions in flat (the backward's, which so skips the rest)."""
    hit = np.empty(flat.size, np.int64)
    m = 0
    b = 0
    for e in range(flat.size):
        while flat[e] >= (b + 1) * n:  # rows ascend: no division per entry
            b += 1
        c = flat[e] - b * n
        if on[c]:
            hit[m] = e
            m += 1
            v = sign * vals[e]
            if v != 0.0:
                for j in range(W.shape[1]):
                    y[b, j] += v * W[c, j]
    return hit[:m]


@_njit
def swap_backward(hit, flat, vals, n, W, g, gv, gW, sign, with_ga):
    """The gradient of swap_forward (hit: what it returned) for the loss's gradient g [B, d] of y,
    added in place: gW at the columns that are on, and with_ga, gv at the entries (the
    activations' gradient there, one per entry of flat)."""
    for e in hit:
        b = flat[e] // n
        c = flat[e] - b * n
        if with_ga:
            u = 0.0
            for j in range(W.shape[1]):
                u += g[b, j] * W[c, j]
            gv[e] += sign * u
        v = sign * vals[e]
        if v != 0.0:
            for j in range(W.shape[1]):
                gW[c, j] += v * g[b, j]


@_njit
def swap_cancel(hit, flat, ga):
    """Zero the flat ga at the support entries swap_forward hit (a swapped parent's own decode,
    which the swap cancels)."""
    for e in hit:
        ga[flat[e]] = 0.0
