// The paramopt dashboard: plain JavaScript, no framework, no build step, no
// network beyond this server. It reads the /v1/dashboard routes (see
// docs/dashboard.md) and redraws every few seconds.
//
// Auth: when the server has a token, open the page once as /?token=SECRET.
// The token moves to localStorage and out of the address bar.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const params = new URLSearchParams(location.search);
if (params.has("token")) {
  localStorage.setItem("paramopt.token", params.get("token"));
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
}
// Log out: forget the token this browser keeps; the page then asks for it again.
(function logoutButton() {
  const button = document.getElementById("logout");
  if (!button) return;
  button.hidden = !localStorage.getItem("paramopt.token");
  button.onclick = () => {
    localStorage.removeItem("paramopt.token");
    location.replace(location.pathname);
  };
})();
const REFRESH_SECS = Math.max(1, Number(params.get("refresh")) || 5);

// What is shown: the module, and the parameter and context of the history chart.
// Kept in the hash (#module/parameter/session/regime), so a view can be linked.
const state = { module: null, parameter: null, session: null, regime: null, grid: null, refreshes: 0 };
(function readHash() {
  const [module, parameter, session, regime] = decodeURIComponent(location.hash.slice(1)).split("/");
  Object.assign(state, { module: module || null, parameter: parameter || null, session: session || null, regime: regime || null });
})();
function writeHash() {
  const parts = [state.module, state.parameter, state.session, state.regime].filter(Boolean);
  history.replaceState(null, "", "#" + parts.map(encodeURIComponent).join("/"));
}

async function api(path) {
  const headers = {};
  const token = localStorage.getItem("paramopt.token");
  if (token) headers.Authorization = "Bearer " + token;
  const response = await fetch(path, { headers, cache: "no-store" });
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
    if (response.status === 401) message += " (open the page as /?token=…)";
    throw new Error(message);
  }
  return response.json();
}

// ----- small DOM and SVG helpers -----

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else if (k === "onclick" || k === "onchange") node[k] = v;
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

function s(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) node.setAttribute(k, v);
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

function fmt(v, digits = 4) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (Number.isInteger(v) && Math.abs(v) < 1e6) return String(v);
  const a = Math.abs(v);
  if (a >= 1000) return v.toFixed(0);
  if (a >= 1) return trim(v.toFixed(Math.max(0, digits - 1 - Math.floor(Math.log10(a)))));
  if (a === 0) return "0";
  return v.toPrecision(digits - 1).replace(/(\.\d*?)0+$/, "$1").replace(/\.$/, "");
}

function trim(text) {
  return text.includes(".") ? text.replace(/0+$/, "").replace(/\.$/, "") : text;
}

function pct(v) {
  if (v === null || v === undefined) return "–";
  const p = v * 100;
  return (p > 0 ? "+" : p < 0 ? "−" : "") + Math.abs(p).toFixed(Math.abs(p) < 10 ? 1 : 0) + "%";
}

function age(secs) {
  if (secs === null || secs === undefined) return "–";
  if (secs < 90) return Math.round(secs) + " s";
  if (secs < 5400) return Math.round(secs / 60) + " min";
  if (secs < 172800) return (secs / 3600).toFixed(1) + " h";
  return (secs / 86400).toFixed(1) + " d";
}

const int = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
const empty = (text, id) => h("div", { class: "empty", id }, text);

// Ticks at round numbers covering [lo, hi].
function ticks(lo, hi, count) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => st >= raw) || raw;
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(Math.abs(t) < step * 1e-9 ? 0 : t);
  return out;
}

function padded(lo, hi) {
  if (!(hi > lo)) {
    const d = Math.abs(lo) * 0.1 || 0.01;
    return [lo - d, hi + d];
  }
  const d = (hi - lo) * 0.08;
  return [lo - d, hi + d];
}

// A line chart frame: returns the svg, and x/y scales into it.
function frame(width, height, xs, ys, xLabel) {
  const m = { left: 54, right: 14, top: 14, bottom: 30 };
  const x = (v) => m.left + ((v - xs[0]) / (xs[1] - xs[0] || 1)) * (width - m.left - m.right);
  const y = (v) => height - m.bottom - ((v - ys[0]) / (ys[1] - ys[0] || 1)) * (height - m.top - m.bottom);
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
  for (const t of ticks(ys[0], ys[1], 6)) {
    svg.append(s("line", { class: "gridline", x1: m.left, x2: width - m.right, y1: y(t), y2: y(t) }));
    svg.append(s("text", { x: m.left - 6, y: y(t) + 4, "text-anchor": "end" }, fmt(t, 3)));
  }
  for (const t of ticks(xs[0], xs[1], 6)) {
    if (!Number.isInteger(t) && xs[1] - xs[0] > 6) continue;
    svg.append(s("text", { x: x(t), y: height - m.bottom + 15, "text-anchor": "middle" }, int(t)));
  }
  svg.append(s("line", { class: "axis", x1: m.left, x2: width - m.right, y1: height - m.bottom, y2: height - m.bottom }));
  svg.append(s("line", { class: "axis", x1: m.left, x2: m.left, y1: m.top, y2: height - m.bottom }));
  svg.append(s("text", { x: width - m.right, y: height - 3, "text-anchor": "end" }, xLabel));
  return { svg, x, y, m, width, height };
}

// ----- sections -----

function renderModules(overview) {
  const nav = document.getElementById("modules");
  const names = overview.modules.map((m) => m.module);
  if (!names.includes(state.module)) state.module = names[0] || null;
  nav.replaceChildren(
    ...names.map((name) =>
      h("button", {
        class: name === state.module ? "active" : "",
        "data-module": name,
        onclick: () => {
          if (state.module === name) return;
          Object.assign(state, { module: name, parameter: null, grid: null });
          writeHash();
          refresh();
        },
      }, name)
    )
  );
}

function renderOps(overview) {
  const st = overview.store;
  const health = st.kind === "none" ? h("span", { class: "muted" }, "no store") :
    st.healthy ? h("span", { class: "ok" }, "✓ healthy") : h("span", { class: "fail" }, "✗ unhealthy");
  document.getElementById("ops-store").replaceChildren(
    h("div", { class: "muted" }, "store"),
    h("div", { class: "big", "data-kind": st.kind, "data-healthy": String(st.healthy) }, st.kind, " ", health),
    h("div", { class: "muted" }, int(st.errors), " store errors since start")
  );
  const rows = overview.modules.map((m) =>
    h("tr", { "data-module": m.module, class: m.module === state.module ? "current" : "" },
      h("td", {}, h("b", {}, m.module)),
      h("td", { class: "num" }, int(m.generation)),
      h("td", { class: "num" }, int(m.outcomes)),
      h("td", { class: "num" }, int(m.decisions)),
      h("td", { class: "num pending" }, int(m.pending)),
      h("td", { class: "num" }, int(m.expired)),
      h("td", { class: "num" }, int(m.refused_full)),
      h("td", { class: "num" }, int(m.rejected_outcomes)),
      h("td", { class: "num checkpoint-age" }, age(m.checkpoint_age_secs)),
      h("td", { class: "safety", "data-exploring": String(m.safety.exploring) },
        m.safety.exploring ? "exploring" : h("span", { class: "fail" }, "incumbents only"),
        h("div", { class: "muted" }, "budget left ", fmt(m.safety.remaining), " of ", fmt(m.safety.budget)))
    )
  );
  document.getElementById("ops-modules").replaceChildren(
    h("table", {},
      h("thead", {}, h("tr", {}, ["module", "generation", "outcomes learned", "decisions", "pending decisions",
        "expired", "refused (full)", "rejected outcomes", "checkpoint age", "loss budget"].map((t) => h("th", {}, t)))),
      h("tbody", {}, rows))
  );
}

function tint(moved) {
  const a = Math.min(1, Math.abs(moved) / 0.25) * 0.55;
  if (a < 0.01) return "";
  return `background: rgba(var(${moved > 0 ? "--up" : "--down"}), ${a.toFixed(3)})`;
}

function renderGrid(grid) {
  state.grid = grid;
  document.getElementById("grid-meta").textContent =
    `${grid.module} · generation ${int(grid.generation)} · ${int(grid.outcomes)} outcomes learned`;
  const head1 = h("tr", {}, h("th", { rowspan: 2 }, "parameter"), h("th", { rowspan: 2 }, "default"),
    grid.sessions.map((sn) => h("th", { class: "session", colspan: grid.regimes.length }, sn.replace("_", " "))),
    h("th", { rowspan: 2, title: "largest move over contexts, as a share of the range" }, "max moved"));
  const head2 = h("tr", {}, grid.sessions.flatMap(() => grid.regimes.map((r) => h("th", { class: "regime" }, r))));
  let lastGroup = null;
  const body = grid.parameters.map((p) => {
    const [group, name] = p.name.split(/\.(.*)/s);
    const start = group !== lastGroup;
    lastGroup = group;
    const maxMoved = p.cells.reduce((a, c) => (Math.abs(c.moved) > Math.abs(a) ? c.moved : a), 0);
    return h("tr", { class: start ? "group-start" : "", "data-param": p.name },
      h("td", { class: "param", title: `range [${p.lo}, ${p.hi}]` }, h("span", { class: "group" }, group + "."), name),
      h("td", { class: "num default" }, fmt(p.default)),
      p.cells.map((c, i) => {
        const context = c.session + "/" + c.regime;
        const selected = p.name === state.parameter && c.session === state.session && c.regime === state.regime;
        return h("td", {
          class: "cell num" + (i % grid.regimes.length === 0 ? " first" : "") + (selected ? " selected" : ""),
          style: tint(c.moved),
          "data-param": p.name,
          "data-context": context,
          "data-value": String(c.incumbent),
          "data-moved": String(c.moved),
          title: `${p.name} in ${context}\nincumbent ${c.incumbent}\ndefault ${p.default}\nmoved ${pct(c.moved)} of the range`,
          onclick: () => {
            Object.assign(state, { parameter: p.name, session: c.session, regime: c.regime });
            writeHash();
            refresh();
          },
        }, fmt(c.incumbent));
      }),
      h("td", { class: "num moved" + (Math.abs(maxMoved) >= 0.05 ? " big" : "") }, pct(maxMoved))
    );
  });
  document.getElementById("grid-body").replaceChildren(
    h("table", { id: "grid-table" }, h("thead", {}, head1, head2), h("tbody", {}, body))
  );
}

function renderHistoryControls(grid) {
  const names = grid.parameters.map((p) => p.name);
  if (!names.includes(state.parameter)) state.parameter = names[0];
  if (!grid.sessions.includes(state.session)) state.session = grid.sessions[0];
  if (!grid.regimes.includes(state.regime)) state.regime = grid.regimes[0];
  const param = document.getElementById("history-param");
  param.replaceChildren(...names.map((n) => h("option", { value: n }, n)));
  param.value = state.parameter;
  param.onchange = () => { state.parameter = param.value; writeHash(); refresh(); };
  const ctx = document.getElementById("history-context");
  ctx.replaceChildren(...grid.sessions.flatMap((sn) => grid.regimes.map((r) => h("option", { value: sn + "/" + r }, sn + " / " + r))));
  ctx.value = state.session + "/" + state.regime;
  ctx.onchange = () => { [state.session, state.regime] = ctx.value.split("/"); writeHash(); refresh(); };
}

function renderHistory(hist) {
  const box = document.getElementById("history-chart");
  const meta = document.getElementById("history-meta");
  meta.replaceChildren(
    "now ", h("b", { id: "history-live", "data-value": String(hist.live.incumbent) }, fmt(hist.live.incumbent)),
    ` · ${int(hist.generations)} generations` + (hist.stride > 1 ? ` (every ${hist.stride}th shown)` : "")
  );
  const points = hist.points;
  if (points.length === 0) {
    box.replaceChildren(empty("No generations stored yet: the first checkpoint starts the history.", "history-empty"));
    box.dataset.points = "0";
    return;
  }
  const W = 680, H = 330;
  const gens = points.map((p) => p.generation);
  const vals = points.map((p) => p.incumbent).concat([hist.default, hist.live.incumbent]);
  const xs = gens.length > 1 ? [gens[0], gens[gens.length - 1]] : [gens[0] - 1, gens[0] + 1];
  const f = frame(W, H, xs, padded(Math.min(...vals), Math.max(...vals)), "generation");
  const { svg, x, y, m } = f;
  svg.id = "history-svg";
  svg.append(s("line", { class: "default-line", x1: m.left, x2: W - m.right, y1: y(hist.default), y2: y(hist.default) },
    s("title", {}, "default " + hist.default)));
  for (const e of hist.events) {
    if (e.kind === "checkpoint" || e.generation === null || e.generation < xs[0] || e.generation > xs[1]) continue;
    const g = s("g", { class: "marker " + e.kind, "data-generation": e.generation });
    g.append(s("line", { x1: x(e.generation), x2: x(e.generation), y1: m.top, y2: H - m.bottom }));
    g.append(s("text", { x: x(e.generation) + 3, y: m.top + 9 }, e.kind));
    g.append(s("title", {}, `${e.kind} → generation ${e.generation}, ${new Date(e.created_at * 1000).toLocaleString()}`));
    svg.append(g);
  }
  svg.append(s("polyline", { class: "series", points: points.map((p) => `${x(p.generation).toFixed(1)},${y(p.incumbent).toFixed(1)}`).join(" ") }));
  const r = points.length > 300 ? 1.6 : points.length > 80 ? 2.4 : 3.4;
  for (const p of points) {
    svg.append(s("circle", {
      class: "point " + p.kind, cx: x(p.generation).toFixed(1), cy: y(p.incumbent).toFixed(1), r,
      "data-generation": p.generation, "data-value": String(p.incumbent),
    }, s("title", {}, `generation ${p.generation} (${p.kind}): ${p.incumbent}\n${int(p.outcomes)} outcomes, ${new Date(p.created_at * 1000).toLocaleString()}`)));
  }
  box.dataset.points = String(points.length);
  box.replaceChildren(svg);
}

function stat(label, value, id, none, long) {
  return h("div", { class: "stat" }, h("div", { class: "label" }, label),
    h("div", { class: "value" + (none ? " none" : "") + (long ? " long" : ""), id }, value));
}

// The off-policy estimate with its interval and worth: an estimate from a
// handful of effective decisions must look like one.
// Below 30 effective decisions the interval only reflects the reward model's
// spread, not its error, so it is not shown.
function estimateText(e) {
  if (e.effective_n < 30) {
    return `≈ ${fmt(e.value)} (reward model; effective n ${fmt(e.effective_n, 1)} of ${int(e.decisions)})`;
  }
  return `${fmt(e.value)} (95% ${fmt(e.ci_low)}…${fmt(e.ci_high)}, effective n ${fmt(e.effective_n, 1)} of ${int(e.decisions)})`;
}

function renderProgress(prog) {
  const widths = prog.posterior.map((p) => p.mean_width);
  const meanWidth = widths.length ? widths.reduce((a, b) => a + b, 0) / widths.length : null;
  const last = prog.reward.filter((p) => p.window_reward !== null).slice(-1)[0];
  document.getElementById("progress-stats").replaceChildren(
    stat("outcomes learned", int(prog.outcomes), "progress-outcomes"),
    stat("recent mean reward", last ? fmt(last.window_reward) : "–", "progress-recent"),
    stat("defaults' estimate", prog.defaults_estimate === null ? "no off-policy estimate yet" : estimateText(prog.defaults_estimate_detail),
      "progress-defaults", prog.defaults_estimate === null),
    stat("posterior width", meanWidth === null ? "–" : fmt(meanWidth, 3), "progress-width"),
    stat("A/B test", prog.ab_test === null ? "No A/B test running" : abText(prog.ab_test), "ab-status", prog.ab_test === null, true)
  );

  const box = document.getElementById("reward-chart");
  const pts = prog.reward.filter((p) => p.mean_reward !== null);
  if (pts.length === 0) {
    box.replaceChildren(empty("No rewards stored yet: the chart starts with the first checkpoint after an outcome.", "reward-empty"));
    box.dataset.points = "0";
  } else {
    const W = 680, H = 200;
    const xsv = pts.map((p) => p.outcomes);
    const ysv = pts.flatMap((p) => [p.mean_reward, p.window_reward]).filter((v) => v !== null);
    if (prog.defaults_estimate !== null) ysv.push(prog.defaults_estimate);
    const xs = Math.max(...xsv) > Math.min(...xsv) ? [Math.min(...xsv), Math.max(...xsv)] : [0, Math.max(1, xsv[0])];
    const { svg, x, y, m } = frame(W, H, xs, padded(Math.min(...ysv), Math.max(...ysv)), "outcomes learned");
    svg.id = "reward-svg";
    if (prog.defaults_estimate !== null) {
      svg.append(s("line", { class: "defaults-estimate", x1: m.left, x2: W - m.right, y1: y(prog.defaults_estimate), y2: y(prog.defaults_estimate) }));
    }
    // Window means are broken at rollbacks and promotions (null there).
    let run = [];
    const flush = () => {
      if (run.length > 0) svg.append(s("polyline", { class: "series window", points: run.join(" ") }));
      run = [];
    };
    for (const p of pts) {
      if (p.window_reward === null) { flush(); continue; }
      run.push(`${x(p.outcomes).toFixed(1)},${y(p.window_reward).toFixed(1)}`);
    }
    flush();
    // The running mean restarts at a rollback or promotion: a new line from there.
    let line = [];
    const flushLine = () => {
      if (line.length > 0) svg.append(s("polyline", { class: "cumulative", points: line.join(" ") }));
      line = [];
    };
    for (const p of pts) {
      if (p.kind !== "checkpoint") flushLine();
      line.push(`${x(p.outcomes).toFixed(1)},${y(p.mean_reward).toFixed(1)}`);
    }
    flushLine();
    for (const p of pts.filter((p) => p.window_reward !== null)) {
      svg.append(s("circle", { class: "point reward", cx: x(p.outcomes).toFixed(1), cy: y(p.window_reward).toFixed(1), r: pts.length > 80 ? 1.5 : 2.5 },
        s("title", {}, `generation ${p.generation}: ${fmt(p.window_reward)} since the previous point, ${fmt(p.mean_reward)} overall`)));
    }
    box.dataset.points = String(pts.length);
    box.replaceChildren(svg);
  }

  const max = Math.max(1e-12, ...widths);
  document.getElementById("posterior").replaceChildren(
    ...prog.posterior.map((p) =>
      h("div", { class: "row", title: `${p.parameter}: mean ${p.mean_width}, widest ${p.max_width}` },
        h("span", { class: "name" }, p.parameter),
        h("span", { class: "track" }, h("span", { class: "fill", style: `width: ${(100 * p.mean_width / max).toFixed(1)}%; display: block` })),
        h("span", { class: "num" }, fmt(p.mean_width, 3))))
  );
}

function abText(ab) {
  if (typeof ab !== "object") return String(ab);
  return ab.status || ab.name || JSON.stringify(ab);
}

function renderAttribution(eff) {
  const box = document.getElementById("attribution-body");
  if (eff.rows.length === 0) {
    box.replaceChildren(empty(`No effectiveness rows yet: parameter_effectiveness has nothing for ${eff.module}.`, "attribution-empty"));
    return;
  }
  const rows = eff.rows.map((r) => {
    const context = (r.session || "all sessions") + " / " + (r.regime || "all regimes");
    return h("tr", {},
      h("td", {}, h("code", {}, r.parameter)),
      h("td", { class: "num" }, fmt(r.value)),
      h("td", {}, context),
      h("td", { class: "num" }, (100 * r.success_rate).toFixed(1) + "%"),
      h("td", { title: `95% interval ${(100 * r.success_lo95).toFixed(1)}% – ${(100 * r.success_hi95).toFixed(1)}%` },
        h("span", { class: "interval" },
          h("span", { class: "range", style: `left: ${100 * r.success_lo95}%; width: ${100 * (r.success_hi95 - r.success_lo95)}%` }),
          h("span", { class: "mark", style: `left: calc(${100 * r.success_rate}% - 1px)` }))),
      h("td", { class: "num" }, pct(r.avg_return)),
      h("td", { class: "num" }, int(r.sample_size)),
      h("td", { class: "muted" }, r.last_updated)
    );
  });
  box.replaceChildren(h("table", { id: "attribution-table" },
    h("thead", {}, h("tr", {}, ["parameter", "value", "context", "success rate", "95% interval", "mean return", "samples", "updated"].map((t) => h("th", {}, t)))),
    h("tbody", {}, rows)));
}

function renderMoves(moves) {
  const box = document.getElementById("moves-body");
  if (moves.moves.length === 0) {
    box.replaceChildren(empty(`No moves on evidence yet: ${moves.module} serves what it served, the defaults unless a test said otherwise.`, "moves-empty"));
    return;
  }
  const rows = moves.moves.map((m) => {
    const changed = m.changes.length === 0 ? h("span", { class: "muted" }, "no value changed")
      : h("span", {}, ...m.changes.map((c) => h("div", {}, h("code", {}, c.parameter), ` ${fmt(c.before)} → ${fmt(c.after)}`)));
    return h("tr", { class: "move " + m.kind, title: m.reason || "" },
      h("td", { class: "muted" }, new Date(m.created_at * 1000).toLocaleString()),
      h("td", {}, m.kind.replaceAll("_", " ")),
      h("td", {}, m.context || "—"),
      h("td", {}, changed),
      h("td", { class: "num" }, fmt(m.estimate, 5)),
      h("td", { class: "num" }, fmt(m.lower_bound, 5)),
      h("td", { class: "num" }, m.n === null ? "—" : int(Math.round(m.n))),
      h("td", { class: "muted" }, m.paired || "")
    );
  });
  box.replaceChildren(h("table", { id: "moves-table" },
    h("thead", {}, h("tr", {}, ["when", "move", "context", "what changed", "estimate", "lower bound", "n", "paired difference"].map((t) => h("th", {}, t)))),
    h("tbody", {}, rows)));
}

// ----- the refresh loop -----

let running = null;
let again = false;

async function refresh() {
  if (running) { again = true; return running; }
  running = (async () => {
    const status = document.getElementById("status");
    try {
      const overview = await api("/v1/dashboard/overview");
      renderModules(overview);
      renderOps(overview);
      if (state.module) {
        const mod = encodeURIComponent(state.module);
        const grid = await api(`/v1/dashboard/modules/${mod}/grid`);
        renderHistoryControls(grid);
        renderGrid(grid);
        const q = new URLSearchParams({ parameter: state.parameter, session: state.session, regime: state.regime });
        const [hist, prog, eff, moves] = await Promise.all([
          api(`/v1/dashboard/modules/${mod}/history?${q}`),
          api(`/v1/dashboard/modules/${mod}/progress`),
          api(`/v1/dashboard/modules/${mod}/effectiveness`),
          api(`/v1/dashboard/modules/${mod}/moves`),
        ]);
        renderHistory(hist);
        renderProgress(prog);
        renderAttribution(eff);
        renderMoves(moves);
        writeHash();
      }
      state.refreshes += 1;
      // Tests wait for this before they read the page.
      document.body.dataset.refreshes = String(state.refreshes);
      status.className = "";
      status.textContent = `updated ${new Date().toLocaleTimeString()} · every ${REFRESH_SECS} s`;
    } catch (e) {
      status.className = "error";
      status.textContent = "refresh failed: " + e.message;
      document.body.dataset.error = e.message;
    }
  })();
  await running;
  running = null;
  if (again) { again = false; return refresh(); }
}

refresh();
setInterval(refresh, REFRESH_SECS * 1000);
