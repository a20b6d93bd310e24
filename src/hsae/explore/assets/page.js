"use strict";
// HSAE forest browser. All data is inlined in #data; examples are base64 arrays decoded per
// level on first use, and DOM is built only for what is visible (lazy expansion, paged lists).
const D = JSON.parse(document.getElementById("data").textContent);
const M = D.meta, L = M.sizes.length, W = M.before + 1 + M.after, K = M.k;
const PAGE = 100, KEY = 1 << 20;

function b64(s, T) {
  const bin = atob(s), u = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) u[i] = bin.charCodeAt(i);
  return new T(u.buffer);
}
const TOK = b64(D.tokens, D.tokdtype === "uint16" ? Uint16Array : Uint32Array);
const EX = [];  // per level: decoded example arrays, filled on first use
function ex(l) {
  if (!EX[l]) {
    EX[l] = {};
    for (const kind of ["top", "sample"]) {
      const e = D.levels[l].ex[kind];
      EX[l][kind] = {row: b64(e.row, Int32Array), act: b64(e.act, Float32Array), q: b64(e.q, Uint8Array)};
    }
  }
  return EX[l];
}
// children lists, built once (parent arrays are per child)
const KIDS = [];
for (let l = 0; l < L; l++) KIDS.push(Array.from({length: M.sizes[l]}, () => []));
for (let l = 1; l < L; l++) D.levels[l].parent.forEach((p, i) => { if (p >= 0) KIDS[l - 1][p].push(i); });
for (let l = 0; l < L - 1; l++) KIDS[l].forEach(ks => ks.sort((a, b) => D.levels[l + 1].freq[b] - D.levels[l + 1].freq[a]));

const $ = id => document.getElementById(id);
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const k in attrs || {}) {
    if (k === "class") e.className = attrs[k];
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), attrs[k]);
    else e.setAttribute(k, attrs[k]);
  }
  for (const c of kids) if (c !== null && c !== undefined) e.append(c);
  return e;
}
const pct = f => f < 0 ? "–" : (f * 100).toFixed(f < 0.001 ? 3 : 2) + "%";
const fx = (v, d = 2) => v < 0 ? "–" : Number(v).toFixed(d);
const fname = (l, i) => `${l}:${i}`;
const show = s => s.replace(/\n/g, "↵");

function examples(l, i, kind) {
  const e = ex(l)[kind], out = [];
  for (let j = 0; j < K; j++) {
    const row = e.row[i * K + j];
    if (row < 0) continue;
    const q = e.q.subarray((i * K + j) * W, (i * K + j + 1) * W);
    out.push({row, act: e.act[i * K + j], q});
  }
  return out;
}
// the most frequent activating tokens of a feature's top examples: a one-line summary
function summary(l, i) {
  const ex_ = D.levels[l].expl[i];
  if (ex_) return ex_;
  const cnt = new Map();
  for (const e of examples(l, i, "top")) {
    const t = D.vocab[TOK[e.row - M.row_start]].trim() || show(D.vocab[TOK[e.row - M.row_start]]);
    cnt.set(t, (cnt.get(t) || 0) + 1);
  }
  const top = [...cnt.entries()].sort((a, b) => b[1] - a[1]).slice(0, 4).map(x => JSON.stringify(x[0]));
  return top.length ? top.join(" ") : "(never fires)";
}
function ctxLine(l, i, e) {
  const d = el("div", {class: "ctx"}, el("span", {class: "a"}, e.act.toFixed(2)));
  const base = e.row - M.row_start - M.before, mx = D.levels[l].max[i];
  for (let j = 0; j < W; j++) {
    if (e.q[j] === 255) continue;  // outside the row's context
    const s = D.vocab[TOK[base + j]], v = e.q[j] / 254;
    const sp = el("span", {class: "t" + (j === M.before ? " hit" : ""), title: (v * mx).toFixed(2)});
    if (v > 0) sp.style.background = `rgba(255,140,0,${(0.15 + 0.85 * v).toFixed(2)})`;
    const parts = s.split("\n");
    parts.forEach((p, k) => { if (k) sp.append(el("span", {class: "nl"}, "↵\n")); sp.append(p); });
    d.append(sp);
  }
  return d;
}
function edgeText(l, i) {
  const E = D.levels[l], st = E.wns && E.wns[i];
  // with `hsae eval --wordnet`: the two synsets and whether the child's lies under the parent's
  const wn = st ? ` · WordNet ${E.wn[i]} ${st === "consistent" ? "⊂" : st === "equal" ? "=" : "⊄"} ${D.levels[l - 1].wn[E.parent[i]]} (${st})` : "";
  return `P(p|c) ${fx(E.pc[i])} · P(c|p) ${fx(E.cp[i])} · cos ${fx(E.cos[i])} · co ${E.both[i]}` + wn;
}

// ---------- forest (left) ----------
let selected = null;
function rowFor(l, i, withEdge) {
  const kids = l < L - 1 ? KIDS[l][i] : [];
  const tog = el("span", {class: "tog"}, kids.length ? "▸" : "");
  const r = el("div", {class: "row", "data-f": fname(l, i)}, tog, el("span", {class: "fid"}, fname(l, i)),
    el("span", {class: "freq"}, pct(D.levels[l].freq[i])),
    withEdge && l > 0 ? el("span", {class: "edge"}, edgeText(l, i)) : null,
    el("span", {class: "sum"}, summary(l, i)));
  const node = el("div", {class: "node"}, r);
  let open = false, box = null;
  tog.addEventListener("click", ev => {
    ev.stopPropagation();
    if (!kids.length) return;
    open = !open;
    tog.textContent = open ? "▾" : "▸";
    if (open && !box) { box = el("div", {class: "kids"}); pageInto(box, kids.map(c => [l + 1, c]), true); node.append(box); }
    if (box) box.style.display = open ? "" : "none";
  });
  tog.classList.add("toggle");
  r.addEventListener("click", () => select(l, i));
  return node;
}
function pageInto(box, items, withEdge) {
  let shown = 0;
  const more = el("button", {class: "more"}, "");
  const add = () => {
    for (const [l, i] of items.slice(shown, shown + PAGE)) box.insertBefore(rowFor(l, i, withEdge), more);
    shown = Math.min(items.length, shown + PAGE);
    more.textContent = `show more (${items.length - shown} left)`;
    more.style.display = shown < items.length ? "" : "none";
  };
  more.addEventListener("click", add);
  box.append(more);
  add();
}
function roots() {
  const out = [];
  for (let i = 0; i < M.sizes[0]; i++) out.push([0, i]);
  for (let l = 1; l < L; l++) D.levels[l].parent.forEach((p, i) => { if (p < 0) out.push([l, i]); });
  return out.sort((a, b) => D.levels[b[0]].freq[b[1]] - D.levels[a[0]].freq[a[1]]);
}

// ---------- detail (right) ----------
function flink(l, i) { return el("a", {class: "f", onclick: () => select(l, i)}, fname(l, i)); }
function histogram(l, i) {
  const h = D.levels[l].hist[i], t = D.levels[l].thr[i];
  let last = h.length - 1;
  while (last > 0 && h[last] === 0) last--;
  const n = last + 1, mx = Math.max(1, ...h), bw = Math.max(6, Math.floor(300 / n));
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("width", n * bw + 40); svg.setAttribute("height", 90); svg.setAttribute("class", "hist");
  for (let b = 0; b < n; b++) {
    const hgt = 70 * h[b] / mx, r = document.createElementNS(svg.namespaceURI, "rect");
    const lo = t * Math.pow(2, b / M.bpo), hi = t * Math.pow(2, (b + 1) / M.bpo);
    Object.entries({x: b * bw, y: 72 - hgt, width: bw - 1, height: hgt, fill: "#e08a1e"}).forEach(([k, v]) => r.setAttribute(k, v));
    const tt = document.createElementNS(svg.namespaceURI, "title"); tt.textContent = `[${lo.toFixed(2)}, ${hi.toFixed(2)}): ${h[b]}`;
    r.append(tt); svg.append(r);
  }
  for (const [x, s] of [[0, t.toFixed(2)], [n * bw, (t * Math.pow(2, n / M.bpo)).toFixed(1)]]) {
    const tx = document.createElementNS(svg.namespaceURI, "text");
    tx.setAttribute("x", x); tx.setAttribute("y", 86); tx.textContent = s; svg.append(tx);
  }
  return svg;
}
function contexts(l, i, kind, limit) {
  const box = el("div", {class: "ctxs"});
  const exs = examples(l, i, kind).slice(0, limit || K);
  if (!exs.length) box.append(el("p", {class: "hint"}, "no examples"));
  for (const e of exs) box.append(ctxLine(l, i, e));
  return box;
}
function select(l, i) {
  selected = [l, i];
  document.querySelectorAll(".row.sel").forEach(r => r.classList.remove("sel"));
  document.querySelectorAll(`.row[data-f="${fname(l, i)}"]`).forEach(r => r.classList.add("sel"));
  const E = D.levels[l], det = $("detail");
  det.replaceChildren();
  det.append(el("h2", {}, `Feature ${fname(l, i)} `, el("span", {class: "freq"}, `level ${l} of ${L}`)));
  if (E.expl[i]) det.append(el("div", {class: "expl"}, E.expl[i]));
  if (E.wn && E.wn[i]) det.append(el("div", {}, `WordNet synset: ${E.wn[i]}`));
  det.append(el("div", {}, `frequency ${pct(E.freq[i])} · mean activation ${fx(E.mean[i])} · max kept ${fx(E.max[i])} · threshold ${fx(E.thr[i])}`));
  if (l > 0 && E.parent[i] >= 0) det.append(el("div", {}, "parent ", flink(l - 1, E.parent[i]), " ", el("span", {class: "edge"}, edgeText(l, i))));
  else det.append(el("div", {}, "root of its own tree"));
  const kids = l < L - 1 ? KIDS[l][i] : [];
  det.append(toolbar(l, i));
  if (kids.length) {
    const t = el("table", {class: "kids"}, el("tr", {}, ...["child", "freq", "P(p|c)", "P(c|p)", "cos", "co-act", "summary"].map(h => el("th", {}, h))));
    const C = D.levels[l + 1];
    for (const c of kids) t.append(el("tr", {}, el("td", {}, flink(l + 1, c)), el("td", {}, pct(C.freq[c])), el("td", {}, fx(C.pc[c])),
      el("td", {}, fx(C.cp[c])), el("td", {}, fx(C.cos[c])), el("td", {}, String(C.both[c])), el("td", {}, summary(l + 1, c))));
    det.append(el("h3", {}, `children (${kids.length})`), t);
  }
  det.append(el("h3", {}, "activation histogram (log bins from the threshold)"), histogram(l, i));
  det.append(el("h3", {}, "promoted tokens (logit lens of the decoder row)"),
    el("div", {class: "chips"}, ...E.promoted[i].map(t => el("span", {}, show(D.vocab[t])))));
  det.append(el("h3", {}, "top activations"), contexts(l, i, "top"));
  det.append(el("h3", {}, "activation-weighted samples"), contexts(l, i, "sample"));
  det.scrollTop = 0; $("right").scrollTop = 0;
}
function toolbar(l, i) {  // the views of one feature, shown on each of them
  const kids = l < L - 1 ? KIDS[l][i] : [];
  return el("div", {class: "bar"},
    el("button", {id: "btn-feature", onclick: () => select(l, i)}, `feature ${fname(l, i)}`),
    el("button", {id: "btn-side", onclick: () => sideBySide(l, i), ...(kids.length ? {} : {disabled: ""})}, "parent & children side by side"),
    el("button", {id: "btn-tree", onclick: () => treeMap(l, i)}, "sibling map of its tree"),
    el("button", {id: "btn-level", onclick: () => levelMap(l, [l, i])}, `map of level ${l}`));
}
function sideBySide(l, i) {
  const det = $("detail"), kids = KIDS[l][i];
  det.replaceChildren(el("h2", {}, "Feature ", flink(l, i), ` and its ${kids.length} children`), toolbar(l, i));
  const row = el("div", {class: "side"});
  const col = (ll, ii, cls) => el("div", {class: cls}, el("div", {}, flink(ll, ii), " ", el("span", {class: "freq"}, pct(D.levels[ll].freq[ii]))),
    ll > l ? el("div", {class: "edge"}, edgeText(ll, ii)) : null, el("div", {class: "expl"}, summary(ll, ii)), contexts(ll, ii, "top", 8));
  row.append(col(l, i, "par"));
  for (const c of kids) row.append(col(l + 1, c, "kid"));
  det.append(row);
}

// ---------- maps ----------
function hue(key) { let h = (key * 2654435761) >>> 0; return `hsl(${h % 360},65%,${45 + (h >> 9) % 20}%)`; }
function scatter(points, title, sel) {  // points: [{l,i,x,y,color,big}]; sel: the feature whose toolbar to show
  const S = 560, ns = "http://www.w3.org/2000/svg", svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", S + 20); svg.setAttribute("height", S + 20); svg.setAttribute("class", "map");
  const at = new Map(points.map(p => [fname(p.l, p.i), p]));
  if (points.length <= 60) for (const p of points) {  // small maps: draw parent -> child edges and labels
    const par = p.l > 0 ? D.levels[p.l].parent[p.i] : -1, q = par >= 0 ? at.get(fname(p.l - 1, par)) : null;
    if (q) { const ln = document.createElementNS(ns, "line");
      Object.entries({x1: 10 + q.x * S, y1: 10 + q.y * S, x2: 10 + p.x * S, y2: 10 + p.y * S, stroke: "#bbb"}).forEach(([k, v]) => ln.setAttribute(k, v)); svg.append(ln); }
  }
  for (const p of points) {
    if (points.length <= 60) { const tx = document.createElementNS(ns, "text");
      tx.setAttribute("x", 18 + p.x * S); tx.setAttribute("y", 14 + p.y * S); tx.textContent = fname(p.l, p.i); svg.append(tx); }
    const c = document.createElementNS(ns, "circle");
    c.setAttribute("cx", 10 + p.x * S); c.setAttribute("cy", 10 + p.y * S); c.setAttribute("r", p.big ? 6 : 3.2 + (L - p.l) * 0.6);
    c.setAttribute("fill", p.color); c.setAttribute("stroke", p.big ? "#000" : "none"); c.setAttribute("opacity", p.dim ? 0.25 : 0.9);
    const t = document.createElementNS(ns, "title"); t.textContent = `${fname(p.l, p.i)}  ${summary(p.l, p.i)}`;
    c.append(t); c.addEventListener("click", () => select(p.l, p.i)); svg.append(c);
  }
  $("detail").replaceChildren(el("h2", {}, title), sel ? toolbar(sel[0], sel[1]) : "", svg);
}
function treeMap(l, i) {
  const key = D.levels[l].root[i], T = D.trees[String(key)];
  if (!T) { $("detail").replaceChildren(el("h2", {}, "Tree of ", flink(l, i)), toolbar(l, i), el("p", {class: "hint"}, "a single-feature tree: no map")); return; }
  // colour by branch: the root's child each member descends from
  const branch = m => { let [ll, ii] = [Math.floor(m / KEY), m % KEY]; while (ll > 1 && D.levels[ll].parent[ii] >= 0) { ii = D.levels[ll].parent[ii]; ll--; } return ll * KEY + ii; };
  const sub = new Set([fname(l, i)]);
  const walk = (ll, ii) => { if (ll < L - 1) for (const c of KIDS[ll][ii]) { sub.add(fname(ll + 1, c)); walk(ll + 1, c); } };
  walk(l, i);
  const pts = T.m.map((m, j) => { const ll = Math.floor(m / KEY), ii = m % KEY;
    return {l: ll, i: ii, x: T.xy[2 * j], y: T.xy[2 * j + 1], color: hue(branch(m)), big: ll === l && ii === i, dim: !sub.has(fname(ll, ii))}; });
  const rk = Math.floor(key / KEY), ri = key % KEY;
  scatter(pts, `Sibling map of the tree of ${fname(rk, ri)} (${T.m.length} features, coloured by branch; ${fname(l, i)}'s subtree bright)`, [l, i]);
}
function levelMap(l, sel) {
  const E = D.levels[l], pts = [];
  for (let i = 0; i < M.sizes[l]; i++) pts.push({l, i, x: E.map[2 * i], y: E.map[2 * i + 1], color: hue(E.root[i]), big: !!sel && sel[1] === i});
  scatter(pts, `Level ${l}: ${M.sizes[l]} decoder rows (UMAP for large levels, PCA for small), coloured by tree`, sel);
}

// ---------- search ----------
let TEXT = null, STARTS = null;  // lower-cased token stream and each row's start offset, built on first text search
function search(q) {
  const res = $("results"), forest = $("forest");
  q = q.trim();
  if (!q) { res.replaceChildren(); forest.style.display = ""; return; }
  forest.style.display = "none";
  const hits = [];
  const m = q.match(/^(\d+)\s*:\s*(\d+)$/);
  if (m || /^\d+$/.test(q)) {
    for (let l = 0; l < L; l++) {
      const i = m ? (+m[1] === l ? +m[2] : -1) : +q;
      if (i >= 0 && i < M.sizes[l]) hits.push([l, i, 0]);
    }
  } else {
    if (!TEXT) {
      STARTS = new Int32Array(TOK.length + 1);
      const parts = [];
      let off = 0;
      for (let r = 0; r < TOK.length; r++) { const s = D.vocab[TOK[r]].toLowerCase(); parts.push(s); STARTS[r] = off; off += s.length; }
      STARTS[TOK.length] = off; TEXT = parts.join("");
    }
    const needle = q.toLowerCase(), mark = new Uint8Array(TOK.length);
    let r = 0;
    for (let p = TEXT.indexOf(needle); p >= 0; p = TEXT.indexOf(needle, p + 1)) {
      while (STARTS[r + 1] <= p) r++;  // rows covered by the match are marked
      for (let rr = r; rr < TOK.length && STARTS[rr] < p + needle.length; rr++) mark[rr] = 1;
    }
    for (let l = 0; l < L; l++) {
      const e = ex(l).top;
      for (let i = 0; i < M.sizes[l]; i++) {
        let score = 0;
        for (let j = 0; j < K; j++) {
          const row = e.row[i * K + j];
          if (row < 0) continue;
          const base = row - M.row_start - M.before;
          if (mark[base + M.before]) { score += 3; continue; }  // on the activating token counts most
          for (let w = 0; w < W; w++) if (e.q[(i * K + j) * W + w] !== 255 && mark[base + w]) { score += 1; break; }
        }
        if (score) hits.push([l, i, score]);
      }
    }
    hits.sort((a, b) => b[2] - a[2]);
  }
  res.replaceChildren(el("div", {class: "hint res"}, `${hits.length} feature(s) for “${q}”` + (hits.length > 200 ? ", best 200 shown" : "")));
  for (const [l, i] of hits.slice(0, 200)) res.append(rowFor(l, i, true));
}

// ---------- start ----------
$("title").textContent = `HSAE forest · ${M.run.split("/").pop()}`;
$("info").textContent = `${M.model} layer ${M.layer} · levels ${M.sizes.join("/")} · ${M.rows} ${M.row_mode} rows scanned, edges on ${M.edge_rows} held-out rows`;
for (let l = 0; l < L; l++) $("levelmap").append(el("option", {value: l}, `map of level ${l} (${M.sizes[l]})`));
$("levelmap").addEventListener("change", e => { if (e.target.value !== "") levelMap(+e.target.value, null); });
let timer = null;
$("search").addEventListener("input", e => { clearTimeout(timer); timer = setTimeout(() => search(e.target.value), 250); });
pageInto($("forest"), roots(), false);
window.HSAE_READY = performance.now();
