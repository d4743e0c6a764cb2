// The Weft dashboard: polls the control plane's JSON every POLL_MS and
// draws the current view (the service graph, a service, the sidecars).
// No library: the graph is laid out in layers here and drawn as SVG, and
// every piece of data goes into the page as text, never as markup.
"use strict";

const POLL_MS = 2000;
const TIMEOUT_MS = 4000;
const SVG = "http://www.w3.org/2000/svg";

// The admin token, when the dashboard is off loopback: `weftctl dashboard`
// puts it after `#token=`; it is kept for this tab only and taken out of
// the address bar.
(function takeToken() {
  const m = location.hash.match(/^#token=([^&/]+)/);
  if (m) {
    sessionStorage.setItem("weft-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + "#/");
  }
})();

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "onclick") e.addEventListener("click", v);
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// ---- numbers -------------------------------------------------------------

function rate(x) {
  if (x >= 100) return Math.round(x).toLocaleString("en-US");
  return x.toFixed(1);
}
function pct(s) {
  if (s >= 1) return "100%";
  return (Math.floor(s * 1000) / 10).toFixed(1) + "%";
}
function ms(x) {
  if (x === 0) return "–";
  if (x < 10) return x.toFixed(2) + " ms";
  if (x < 1000) return x.toFixed(0) + " ms";
  return (x / 1000).toFixed(2) + " s";
}
function ago(unixMs) {
  if (!unixMs) return "–";
  const d = Math.round((Date.now() - unixMs) / 1000);
  const span = (s) => {
    s = Math.abs(s);
    if (s < 90) return s + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    if (s < 172800) return Math.round(s / 3600) + " h";
    return Math.round(s / 86400) + " d";
  };
  return d >= 0 ? span(d) + " ago" : "in " + span(d);
}
function time(unixMs) {
  return new Date(unixMs).toLocaleTimeString("en-GB");
}

// ---- fetching and the live status -----------------------------------------

let downSince = null;

async function api(path) {
  const headers = {};
  const token = sessionStorage.getItem("weft-token");
  if (token) headers["authorization"] = "Bearer " + token;
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
  try {
    const r = await fetch(path, { headers, signal: ctl.signal, cache: "no-store" });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) {
      const e = new Error(body.error || "HTTP " + r.status);
      e.status = r.status;
      throw e;
    }
    return body;
  } catch (e) {
    if (e.name === "AbortError") throw new Error("no answer in " + TIMEOUT_MS / 1000 + " s");
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

function live() {
  downSince = null;
  const s = document.getElementById("status");
  s.dataset.state = "live";
  s.textContent = "live · updated " + time(Date.now());
  document.getElementById("banner").hidden = true;
}

function down(err) {
  if (err.status && err.status !== 502 && err.status !== 503) {
    // The control plane answered: the request is wrong (a service that
    // is gone, a missing credential). Said in the view, not as an outage.
    return false;
  }
  downSince = downSince || Date.now();
  const s = document.getElementById("status");
  s.dataset.state = "down";
  s.textContent = "not answering";
  const b = document.getElementById("banner");
  b.hidden = false;
  b.textContent =
    "The control plane is not answering (since " + time(downSince) + ": " + err.message +
    "). Retrying every " + POLL_MS / 1000 + " s; what is shown is from before.";
  return true;
}

// ---- views -----------------------------------------------------------------

const main = () => document.getElementById("main");

function setView(nodes) {
  const m = main();
  m.replaceChildren(...nodes);
}

function stateOf(s) {
  return el("span", { class: "pill " + s, "data-state": s }, s === "ok" ? "healthy" : s === "bad" ? "failing" : s === "warn" ? "degraded" : "idle");
}

// Layers: every edge goes left to right where it can. A depth-first walk
// from the callers finds the edges that close a cycle; the rest give each
// node its longest distance from a caller. Within a layer, nodes sit near
// the mean row of their callers.
function layout(nodes, edges) {
  const names = nodes.map((n) => n.name);
  const out = new Map(names.map((n) => [n, []]));
  const inDeg = new Map(names.map((n) => [n, 0]));
  for (const e of edges) {
    if (e.from === e.to) continue;
    out.get(e.from).push(e.to);
    inDeg.set(e.to, inDeg.get(e.to) + 1);
  }
  const back = new Set();
  const seen = new Map(); // 1: on the stack, 2: done
  const visit = (root) => {
    const stack = [[root, 0]];
    seen.set(root, 1);
    while (stack.length) {
      const top = stack[stack.length - 1];
      const succ = out.get(top[0]);
      if (top[1] < succ.length) {
        const next = succ[top[1]++];
        if (seen.get(next) === 1) back.add(top[0] + "\u0000" + next);
        else if (!seen.has(next)) {
          seen.set(next, 1);
          stack.push([next, 0]);
        }
      } else {
        seen.set(top[0], 2);
        stack.pop();
      }
    }
  };
  for (const n of names) if (inDeg.get(n) === 0) visit(n);
  for (const n of names) if (!seen.has(n)) visit(n);
  const forward = edges.filter((e) => e.from !== e.to && !back.has(e.from + "\u0000" + e.to));
  const rank = new Map(names.map((n) => [n, 0]));
  for (let i = 0; i < names.length; i++) {
    let moved = false;
    for (const e of forward) {
      if (rank.get(e.to) < rank.get(e.from) + 1) {
        rank.set(e.to, rank.get(e.from) + 1);
        moved = true;
      }
    }
    if (!moved) break;
  }
  const layers = [];
  for (const n of names) {
    const r = rank.get(n);
    (layers[r] = layers[r] || []).push(n);
  }
  const row = new Map();
  layers.forEach((layer, i) => {
    if (i > 0) {
      const bary = (n) => {
        const ps = forward.filter((e) => e.to === n).map((e) => row.get(e.from));
        return ps.length ? ps.reduce((a, b) => a + b, 0) / ps.length : 1e9;
      };
      layer.sort((a, b) => bary(a) - bary(b) || (a < b ? -1 : 1));
    }
    layer.forEach((n, j) => row.set(n, j));
  });
  return { rank, row, layers };
}

const NODE_W = 200, NODE_H = 66, GAP_X = 190, GAP_Y = 34;

function lock(x, y) {
  return svg("g", { class: "lock", transform: "translate(" + x + "," + y + ")" },
    svg("title", {}, "mutual TLS"),
    svg("rect", { x: 0, y: 4, width: 8, height: 6, rx: 1 }),
    svg("path", { class: "shackle", d: "M1.5 4 V2.5 a2.5 2.5 0 0 1 5 0 V4" }));
}

function drawNode(n, x, y, sends) {
  const lines = [];
  if (n.unknown) lines.push("not in the catalog");
  else if (n.instances === 0) lines.push("no instances");
  else if (n.endpoints > 0) lines.push(n.healthy + "/" + n.endpoints + " healthy" + (n.ejected ? " · " + n.ejected + " ejected" : "") + " · " + rate(n.rps) + " rps");
  else lines.push(n.instances + " caller" + (n.instances === 1 ? "" : "s") + " · sends " + rate(sends || 0) + " rps");
  lines.push(n.requests ? pct(n.success_rate) + " ok · p99 " + ms(n.p99_ms) : "no requests to it in the window");
  const g = svg("g", {
    class: "node", "data-name": n.name, "data-state": n.state, "data-unknown": String(n.unknown),
    transform: "translate(" + x + "," + y + ")", tabindex: 0, role: "link",
  },
  svg("title", {}, n.name + ": " + lines.join("; ") + (n.plaintext ? "; " + n.plaintext + " plaintext requests" : "")),
  svg("rect", { class: "box", width: NODE_W, height: NODE_H, rx: 8 }),
  svg("text", { class: "name", x: 10, y: 20 }, n.name.length > 24 ? n.name.slice(0, 23) + "…" : n.name),
  svg("text", { class: "line", x: 10, y: 38 }, lines[0]),
  svg("text", { class: "line", x: 10, y: 54 }, lines[1]));
  let bx = NODE_W - 6;
  const badge = (text, cls) => {
    const w = text.length * 6 + 8;
    bx -= w;
    g.append(svg("rect", { class: "badge-bg " + cls, x: bx, y: -7, width: w, height: 13, rx: 3 }),
      svg("text", { class: "badge", x: bx + 4, y: 3 }, text));
    bx -= 4;
  };
  if (n.gateway) badge("GATEWAY", "");
  if (n.plaintext) badge("PLAINTEXT", "plain");
  const open = () => { location.hash = "#/service/" + encodeURIComponent(n.name); };
  g.addEventListener("click", open);
  g.addEventListener("keydown", (ev) => { if (ev.key === "Enter") open(); });
  return g;
}

function edgeLabel(e) {
  return [rate(e.rps) + " rps", pct(e.success_rate) + " · p99 " + ms(e.p99_ms)];
}

function drawGraph(g) {
  const linked = new Set();
  for (const e of g.edges) { linked.add(e.from); linked.add(e.to); }
  const inGraph = g.nodes.filter((n) => linked.has(n.name));
  const alone = g.nodes.filter((n) => !linked.has(n.name));
  const out = [];
  const bad = g.nodes.filter((n) => n.state === "bad").length;
  out.push(el("p", { class: "summary" },
    g.nodes.length + " services, " + g.edges.length + " edges over the last " + g.window_seconds + " s" +
    (bad ? " · " + bad + " failing" : "") + ". Edges are what the callers' sidecars counted; every one is mutual TLS."));
  if (g.nodes.length === 0) {
    out.push(el("div", { class: "card muted", id: "empty" }, "The mesh is empty: no service has an instance or a resource yet."));
    return out;
  }
  if (inGraph.length) {
    const { rank, row, layers } = layout(inGraph, g.edges);
    const maxRows = Math.max(...layers.map((l) => l.length));
    const W = layers.length * (NODE_W + GAP_X) + 40;
    const H = maxRows * (NODE_H + GAP_Y) + 60;
    const pos = (n) => ({ x: 20 + rank.get(n) * (NODE_W + GAP_X), y: 30 + row.get(n) * (NODE_H + GAP_Y) });
    const root = svg("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, id: "graph" },
      svg("defs", {}, ["ok", "warn", "bad", "idle"].map((s) =>
        svg("marker", { id: "arrow-" + s, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 11, markerHeight: 11, markerUnits: "userSpaceOnUse", orient: "auto-start-reverse" },
          svg("path", { class: "arrow " + s, d: "M0 0 L10 5 L0 10 z" })))));
    const edgeLayer = svg("g", {});
    root.append(edgeLayer);
    for (const e of g.edges) {
      const a = pos(e.from), b = pos(e.to);
      let d, lx, ly;
      if (e.from === e.to) {
        d = "M" + (a.x + NODE_W - 30) + " " + (a.y + NODE_H) + " c 0 40, 40 40, 30 -10";
        lx = a.x + NODE_W - 10; ly = a.y + NODE_H + 30;
      } else if (rank.get(e.to) > rank.get(e.from)) {
        const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
        const mx = (x1 + x2) / 2;
        d = "M" + x1 + " " + y1 + " C " + mx + " " + y1 + ", " + mx + " " + y2 + ", " + x2 + " " + y2;
        lx = mx; ly = (y1 + y2) / 2 - 6;
      } else {
        // Against the layers (a cycle, or a call back to an earlier layer):
        // under the boxes.
        const x1 = a.x + NODE_W / 2, y1 = a.y + NODE_H, x2 = b.x + NODE_W / 2, y2 = b.y + NODE_H;
        const low = Math.max(y1, y2) + 40;
        d = "M" + x1 + " " + y1 + " C " + x1 + " " + low + ", " + x2 + " " + low + ", " + x2 + " " + y2;
        lx = (x1 + x2) / 2; ly = low - 8;
      }
      const width = 1.5 + Math.min(5, Math.log10(1 + e.rps) * 1.5);
      const [label1, label2] = edgeLabel(e);
      edgeLayer.append(svg("g", {
        class: "edge", "data-from": e.from, "data-to": e.to, "data-state": e.state,
        "data-rps": e.rps, "data-requests": e.requests, "data-failures": e.failures, "data-mtls": String(e.mtls),
      },
      svg("title", {}, e.from + " → " + e.to + ": " + label1 + ", " + label2 + "; " + e.requests + " requests, " + e.failures + " failed; mutual TLS"),
      svg("path", { d, "stroke-width": width, "marker-end": "url(#arrow-" + e.state + ")" }),
      lock(lx - label1.length * 3 - 13, ly - 20),
      svg("text", { class: "label", x: lx, y: ly - 11, "text-anchor": "middle" }, label1),
      svg("text", { class: "label", x: lx, y: ly + 2, "text-anchor": "middle" }, label2)));
    }
    const sends = new Map();
    for (const e of g.edges) sends.set(e.from, (sends.get(e.from) || 0) + e.rps);
    for (const n of inGraph) {
      const p = pos(n.name);
      root.append(drawNode(n, p.x, p.y, sends.get(n.name)));
    }
    out.push(el("div", { class: "card graph" }, root));
  }
  if (alone.length) {
    out.push(el("h2", { class: "grid-title" }, "Services without calls in the window (" + alone.length + ")"));
    const cols = Math.max(1, Math.floor((Math.max(window.innerWidth, 900) - 80) / (NODE_W + 20)));
    const rows = Math.ceil(alone.length / cols);
    const W = cols * (NODE_W + 20) + 20, H = rows * (NODE_H + 20) + 20;
    const grid = svg("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, id: "alone" });
    alone.forEach((n, i) => grid.append(drawNode(n, 10 + (i % cols) * (NODE_W + 20), 14 + Math.floor(i / cols) * (NODE_H + 20))));
    out.push(el("div", { class: "card graph" }, grid));
  }
  return out;
}

function chart(title, points, value, fmt, fixedMax) {
  const W = 300, H = 70;
  const vs = points.map(value);
  const max = fixedMax !== undefined ? fixedMax : Math.max(...vs, 0);
  const min = fixedMax !== undefined ? Math.min(...vs, fixedMax) : 0;
  const span = max - min || 1;
  const xy = vs.map((v, i) => [(i / Math.max(1, vs.length - 1)) * W, H - 4 - ((v - min) / span) * (H - 14)]);
  const line = xy.map((p) => p[0].toFixed(1) + "," + p[1].toFixed(1)).join(" ");
  const last = vs.length ? vs[vs.length - 1] : 0;
  return el("div", { class: "chart", "data-chart": title },
    el("div", {}, el("span", { class: "k" }, title + " "), el("span", { class: "v" }, fmt(last))),
    svg("svg", { width: W, height: H + 12, viewBox: "0 0 " + W + " " + (H + 12) },
      svg("polygon", { class: "area", points: "0," + (H - 4) + " " + line + " " + W + "," + (H - 4) }),
      svg("polyline", { points: line }),
      svg("text", { class: "axis", x: 0, y: H + 10 }, "−5 min"),
      svg("text", { class: "axis", x: W, y: H + 10, "text-anchor": "end" }, "now"),
      svg("text", { class: "axis", x: 2, y: 9 }, fmt(max))));
}

function edgeTable(edges, side) {
  if (!edges.length) return el("p", { class: "muted" }, "None in the window.");
  return el("table", {},
    el("tr", {}, el("th", {}, side), el("th", { class: "num" }, "rps"), el("th", { class: "num" }, "success"),
      el("th", { class: "num" }, "p99"), el("th", {}, "transport")),
    edges.map((e) => {
      const other = side === "caller" ? e.from : e.to;
      return el("tr", { "data-state": e.state },
        el("td", {}, el("a", { href: "#/service/" + encodeURIComponent(other) }, other), " ", stateOf(e.state)),
        el("td", { class: "num" }, rate(e.rps)), el("td", { class: "num" }, pct(e.success_rate)),
        el("td", { class: "num" }, ms(e.p99_ms)), el("td", {}, e.mtls ? "mutual TLS" : "plaintext"));
    }));
}

function routeTable(routes, key, none) {
  const list = routes.filter((r) => r[key] > 0).sort((a, b) => b[key] - a[key]).slice(0, 10);
  if (!list.length) return el("p", { class: "muted" }, none);
  return el("table", {},
    el("tr", {}, el("th", {}, "route"), el("th", { class: "num" }, "requests"), el("th", { class: "num" }, "failed")),
    list.map((r) => el("tr", {}, el("td", {}, el("code", {}, r.route)),
      el("td", { class: "num" }, r.requests), el("td", { class: "num" }, r.failures))));
}

function drawService(p) {
  const n = p.node;
  const out = [];
  out.push(el("p", {}, el("a", { href: "#/" }, "← service graph")));
  out.push(el("h1", {}, p.name, stateOf(n.state), n.gateway ? el("span", { class: "pill idle" }, "gateway") : null));
  out.push(el("div", { class: "tiles" },
    [["healthy endpoints", n.healthy + "/" + n.endpoints], ["requests/s", rate(n.rps)], ["success", pct(n.success_rate)],
      ["p50", ms(n.p50_ms)], ["p99", ms(n.p99_ms)], ["plaintext requests", String(n.plaintext)]]
      .map(([k, v]) => el("div", { class: "tile" }, el("div", { class: "k" }, k), el("div", { class: "v" }, v)))));
  out.push(el("h2", {}, "Last 5 minutes (inbound, " + p.history_slot_seconds + " s points)"));
  out.push(el("div", { class: "charts" },
    chart("requests/s", p.history, (h) => h.rps, rate),
    chart("success", p.history, (h) => (h.requests ? h.success_rate : 1), pct, 1),
    chart("p99", p.history, (h) => h.p99_ms, ms)));
  out.push(el("h2", {}, "Instances"));
  out.push(el("table", { id: "instances" },
    el("tr", {}, ["instance", "address", "health", "labels", "sidecar", "certificate", "ejected by", "rps", "success", "p99"]
      .map((h, i) => el("th", { class: i >= 7 ? "num" : undefined }, h))),
    p.instances.map((i) => el("tr", { class: i.health === "unhealthy" ? "problem" : undefined },
      el("td", {}, i.id, i.caller_only ? el("div", { class: "muted" }, "caller only") : null),
      el("td", {}, i.address),
      el("td", {}, i.health, i.health_detail ? el("div", { class: "muted" }, i.health_detail) : null,
        !i.connected ? el("div", { class: "muted" }, "disconnected; removed " + ago(i.expires_unix_ms)) : null),
      el("td", { class: "labels" }, Object.entries(i.labels).map(([k, v]) => el("span", {}, k + "=" + v))),
      el("td", {}, i.sidecar_version || "–"),
      el("td", {}, i.certificate_expires_unix_ms ? "expires " + ago(i.certificate_expires_unix_ms) : "–"),
      el("td", {}, i.ejected_by.length ? i.ejected_by.map((e) => el("div", {}, e.instance_id + " until " + time(e.until_unix_ms))) : "–"),
      el("td", { class: "num" }, rate(i.rps)), el("td", { class: "num" }, pct(i.success_rate)), el("td", { class: "num" }, ms(i.p99_ms))))));
  out.push(el("div", { class: "cols" },
    el("div", {}, el("h2", {}, "Top routes by traffic (last " + p.route_window_seconds + " s)"),
      routeTable(p.routes, "requests", "No requests with a route (gRPC methods) in the window.")),
    el("div", {}, el("h2", {}, "Top routes by errors"), routeTable(p.routes, "failures", "No failed requests in the window."))));
  out.push(el("div", { class: "cols" },
    el("div", {}, el("h2", {}, "Called by"), edgeTable(p.callers, "caller")),
    el("div", {}, el("h2", {}, "Calls"), edgeTable(p.callees, "callee"))));
  out.push(el("h2", {}, "Resources"));
  out.push(p.resources_yaml ? el("pre", { id: "resources" }, p.resources_yaml) : el("p", { class: "muted" }, "No Service, route or policy names it: it runs on the mesh's defaults."));
  return out;
}

function drawSidecars(s) {
  const bad = s.sidecars.filter((r) => r.problems.length).length;
  return [
    el("h1", {}, "Sidecars"),
    el("p", { class: "summary" }, s.sidecars.length + " connected to this control-plane replica" + (bad ? ", " + bad + " with problems (listed first)" : "") + "."),
    s.sidecars.length === 0 ? el("div", { class: "card muted" }, "No sidecar is connected.") :
      el("table", { id: "sidecars" },
        el("tr", {}, ["service", "instance", "address", "version", "connected", "config applied", "last rejection", "certificate", "problems"].map((h) => el("th", {}, h))),
        s.sidecars.map((r) => el("tr", { class: r.problems.length ? "problem" : undefined, "data-instance": r.instance_id },
          el("td", {}, el("a", { href: "#/service/" + encodeURIComponent(r.service) }, r.service)),
          el("td", {}, r.instance_id), el("td", {}, r.address), el("td", {}, r.version || "–"),
          el("td", {}, ago(r.connected_since_unix_ms)),
          el("td", {}, r.sent_version > r.applied_version ? "behind: applied " + (r.applied_version || "none") + ", sent " + r.sent_version : "up to date"),
          el("td", {}, r.nack ? "update " + r.nack.version + ": " + r.nack.reason : "–"),
          el("td", {}, r.certificate_expires_unix_ms ? "expires " + ago(r.certificate_expires_unix_ms) : "–"),
          el("td", { class: "problems" }, r.problems.length ? r.problems.join("; ") : "–")))),
  ];
}

// ---- the loop --------------------------------------------------------------

function route() {
  const h = location.hash || "#/";
  const m = h.match(/^#\/service\/(.+)$/);
  if (m) return { view: "service", name: decodeURIComponent(m[1]) };
  if (h === "#/sidecars") return { view: "sidecars" };
  return { view: "graph" };
}

let timer = null;
let generation = 0;

async function tick() {
  const mine = ++generation;
  clearTimeout(timer);
  const r = route();
  document.getElementById("nav-graph").classList.toggle("active", r.view === "graph");
  document.getElementById("nav-sidecars").classList.toggle("active", r.view === "sidecars");
  try {
    let view;
    if (r.view === "service") view = drawService(await api("/api/services/" + encodeURIComponent(r.name)));
    else if (r.view === "sidecars") view = drawSidecars(await api("/api/sidecars"));
    else view = drawGraph(await api("/api/graph"));
    if (mine !== generation) return;
    setView(view);
    document.body.dataset.view = r.view;
    live();
  } catch (e) {
    if (mine !== generation) return;
    if (!down(e)) {
      live();
      setView([el("p", { class: "card", id: "error" }, e.message), el("p", {}, el("a", { href: "#/" }, "← service graph"))]);
    }
  }
  if (mine === generation) timer = setTimeout(tick, POLL_MS);
}

window.addEventListener("hashchange", () => {
  // A fresh view: nothing of the last one stays on screen.
  setView([el("p", { class: "muted" }, "Loading…")]);
  tick();
});
tick();
