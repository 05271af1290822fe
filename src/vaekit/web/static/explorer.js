// vaekit explorer: the latent map, click-to-decode, sliders, interpolation and uploads.
// Plain JS and canvas, no dependencies; talks to the JSON routes under /api/.
"use strict";

const PALETTE = ["#4263eb", "#f08c00", "#2b8a3e", "#e03131", "#7048e8", "#8d5b3e", "#d6336c", "#495057",
                 "#94a61f", "#1098ad", "#5c7cfa", "#ffa94d", "#69db7c", "#ff8787", "#b197fc", "#c0a080"];
const S = {state: null, mode: "label", selected: null, a: null, b: null, z: null, marker: null, uploads: [],
           hover: null, busy: false, pending: null, view: null};
window.vaekitTimings = [];   // milliseconds of each decode request, as the page measured it
window.vaekitReady = false;

const $ = (id) => document.getElementById(id);

async function api(path, body, raw) {
  const opts = body === undefined ? {} : {method: "POST", body: raw ? body : JSON.stringify(body),
                                          headers: raw ? {} : {"Content-Type": "application/json"}};
  const r = await fetch(path, opts);
  const data = await r.json().catch(() => ({error: `HTTP ${r.status}`}));
  if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
  return data;
}

// -- drawing one example ------------------------------------------------------------------------
function b64bytes(s) {
  const bin = atob(s), out = new Uint8ClampedArray(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function imageCanvas(view, size) {
  const {width: w, height: h, channels: c} = view;
  const px = view._px || (view._px = b64bytes(view.data));
  const small = document.createElement("canvas");
  small.width = w; small.height = h;
  const img = small.getContext("2d").createImageData(w, h);
  for (let i = 0; i < w * h; i++) {
    const r = px[i * c], g = c === 3 ? px[i * c + 1] : r, b = c === 3 ? px[i * c + 2] : r;
    img.data.set([r, g, b, 255], i * 4);
  }
  small.getContext("2d").putImageData(img, 0, 0);
  const scale = Math.max(1, Math.ceil(size / Math.max(w, h)));
  const cv = document.createElement("canvas");
  cv.width = w * scale; cv.height = h * scale; cv.className = "image";
  const shown = size / Math.max(w, h);  // drawn at a whole multiple, shown at exactly the size asked
  cv.style.width = `${Math.round(w * shown)}px`; cv.style.height = `${Math.round(h * shown)}px`;
  const ctx = cv.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(small, 0, 0, cv.width, cv.height);
  return cv;
}

function seriesCanvas(view, size) {
  const dpr = window.devicePixelRatio || 1, w = size * 1.6, h = size;
  const cv = document.createElement("canvas");
  cv.width = w * dpr; cv.height = h * dpr; cv.style.width = w + "px"; cv.style.height = h + "px";
  const ctx = cv.getContext("2d");
  ctx.scale(dpr, dpr);
  const vals = view.values.flat().filter((v) => v !== null && isFinite(v));
  let lo = Math.min(...vals), hi = Math.max(...vals);
  if (!(hi > lo)) { lo -= 1; hi += 1; }
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, w, h);
  view.values.forEach((ch, k) => {
    ctx.strokeStyle = PALETTE[k % PALETTE.length]; ctx.lineWidth = 1.4; ctx.beginPath();
    let pen = false;
    ch.forEach((v, t) => {
      if (v === null || !isFinite(v)) { pen = false; return; }
      const x = 4 + (w - 8) * t / Math.max(1, ch.length - 1), y = h - 4 - (h - 8) * (v - lo) / (hi - lo);
      pen ? ctx.lineTo(x, y) : ctx.moveTo(x, y); pen = true;
    });
    ctx.stroke();
  });
  return cv;
}

function tableNode(view) {
  const wrap = document.createElement("div");
  wrap.className = "rows";
  const t = document.createElement("table");
  t.className = "rowview";
  view.columns.forEach((name, i) => {
    const s = Math.max(-3, Math.min(3, view.scaled[i]));
    const left = s < 0 ? 50 + s / 3 * 50 : 50, width = Math.abs(s) / 3 * 50;
    const tr = document.createElement("tr");
    tr.innerHTML = `<td>${escapeHtml(String(name))}</td><td class="num">${fmt(view.values[i])}</td>` +
      `<td><div class="bar"><i style="left:${left}%;width:${width}%"></i></div></td>`;
    t.appendChild(tr);
  });
  wrap.appendChild(t);
  return wrap;
}

function diverging(v) {  // standardised value -> blue (low) / white / red (high), saturating at 3 SDs
  const t = Math.max(-1, Math.min(1, v / 3)), a = Math.abs(t);
  const [r, g, b] = t < 0 ? [59, 91, 219] : [214, 51, 108];
  return `rgb(${Math.round(255 + (r - 255) * a)},${Math.round(255 + (g - 255) * a)},${Math.round(255 + (b - 255) * a)})`;
}

function heatCanvas(view, size) {
  // a compact picture of a table row: one cell per column, coloured by its standardised value
  const n = view.scaled.length, cols = Math.ceil(Math.sqrt(n)), rows = Math.ceil(n / cols);
  const cell = Math.max(3, Math.floor(size / cols));
  const cv = document.createElement("canvas");
  cv.width = cols * cell; cv.height = rows * cell; cv.className = "heat";
  cv.title = view.columns.map((c, i) => `${c}: ${fmt(view.values[i])}`).join("\n");
  const ctx = cv.getContext("2d");
  ctx.fillStyle = "#f1f3f5"; ctx.fillRect(0, 0, cv.width, cv.height);
  view.scaled.forEach((v, i) => {
    ctx.fillStyle = diverging(v);
    ctx.fillRect((i % cols) * cell + 0.5, Math.floor(i / cols) * cell + 0.5, cell - 1, cell - 1);
  });
  return cv;
}

function viewNode(view, size) {
  if (view.type === "image") return imageCanvas(view, size);
  if (view.type === "series") return seriesCanvas(view, size);
  if (view.type === "table") return size >= 200 ? tableNode(view) : heatCanvas(view, size);
  const d = document.createElement("div");
  d.className = "sentence"; d.textContent = view.text || "(empty)";
  return d;
}

function show(el, view, size) {
  el.innerHTML = "";
  el.appendChild(viewNode(view, size));
}

function fmt(v) {
  if (v === null || v === undefined) return "–";
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-2 || a >= 1e4) ? v.toExponential(2) : v.toFixed(a < 10 ? 3 : 1);
}

function escapeHtml(s) {
  return s.replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

// -- the map ----------------------------------------------------------------------------------------
const map = {cv: null, ctx: null, w: 0, h: 0, lo: [0, 0], hi: [1, 1], pad: 18};

function layoutMap() {
  const cv = $("map"), rect = cv.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
  cv.width = rect.width * dpr; cv.height = rect.height * dpr;
  map.cv = cv; map.ctx = cv.getContext("2d"); map.ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  map.w = rect.width; map.h = rect.height;
  const xs = S.state.coords.map((p) => p[0]), ys = S.state.coords.map((p) => p[1]);
  const span = Math.max(Math.max(...xs) - Math.min(...xs), Math.max(...ys) - Math.min(...ys)) || 1;
  const cx = (Math.max(...xs) + Math.min(...xs)) / 2, cy = (Math.max(...ys) + Math.min(...ys)) / 2;
  map.lo = [cx - span * 0.53, cy - span * 0.53]; map.hi = [cx + span * 0.53, cy + span * 0.53];
  drawBase();
  drawMap();
}

function toPx(p) {
  const s = Math.min(map.w, map.h) - 2 * map.pad;
  const ox = (map.w - s) / 2, oy = (map.h - s) / 2;
  return [ox + (p[0] - map.lo[0]) / (map.hi[0] - map.lo[0]) * s, oy + s - (p[1] - map.lo[1]) / (map.hi[1] - map.lo[1]) * s];
}

function fromPx(x, y) {
  const s = Math.min(map.w, map.h) - 2 * map.pad;
  const ox = (map.w - s) / 2, oy = (map.h - s) / 2;
  return [map.lo[0] + (x - ox) / s * (map.hi[0] - map.lo[0]), map.lo[1] + (oy + s - y) / s * (map.hi[1] - map.lo[1])];
}

function scoreRange() {
  if (S.scoreRange) return S.scoreRange;
  const s = [...S.state.scores].sort((a, b) => a - b);
  S.scoreRange = [s[Math.floor(0.02 * (s.length - 1))], s[Math.floor(0.98 * (s.length - 1))]];
  return S.scoreRange;
}

function ramp(t) {  // a viridis-like ramp, t in [0, 1]
  const stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  t = Math.max(0, Math.min(1, t)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(t)), f = t - i;
  const c = stops[i].map((v, k) => Math.round(v + f * (stops[i + 1][k] - v)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function pointColour(i) {
  const st = S.state;
  if (S.mode === "label" && st.labels) {
    const y = st.labels[i];
    return y < 0 ? "#adb5bd" : PALETTE[y % PALETTE.length];
  }
  const [lo, hi] = scoreRange();
  return ramp((st.scores[i] - lo) / ((hi - lo) || 1));
}

function drawBase() {
  // the examples' points, drawn once per layout or colouring into an offscreen canvas: a decode only
  // redraws the markers over a copy of it
  const dpr = window.devicePixelRatio || 1, st = S.state;
  const base = map.base || (map.base = document.createElement("canvas"));
  base.width = map.cv.width; base.height = map.cv.height;
  const ctx = base.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.globalAlpha = 0.78;
  st.coords.forEach((p, i) => {
    const [x, y] = toPx(p);
    ctx.fillStyle = pointColour(i);
    ctx.beginPath(); ctx.arc(x, y, 3, 0, 2 * Math.PI); ctx.fill();
  });
  ctx.globalAlpha = 1;
  if (S.mode === "score" && st.flags) {
    ctx.strokeStyle = "#d6336c"; ctx.lineWidth = 1.2;
    st.coords.forEach((p, i) => {
      if (!st.flags[i]) return;
      const [x, y] = toPx(p);
      ctx.beginPath(); ctx.arc(x, y, 5, 0, 2 * Math.PI); ctx.stroke();
    });
  }
}

function drawMap() {
  const {ctx} = map, st = S.state;
  ctx.save();
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, map.cv.width, map.cv.height);
  ctx.drawImage(map.base, 0, 0);
  ctx.restore();
  const ring = (i, colour, label) => {
    if (i === null) return;
    const [x, y] = toPx(st.coords[i]);
    ctx.strokeStyle = colour; ctx.lineWidth = 2;
    ctx.beginPath(); ctx.arc(x, y, 7, 0, 2 * Math.PI); ctx.stroke();
    if (label) { ctx.fillStyle = colour; ctx.font = "bold 12px sans-serif"; ctx.fillText(label, x + 9, y - 7); }
  };
  ring(S.a, "#1d2230", "A"); ring(S.b, "#1d2230", "B"); ring(S.selected, "#3b5bdb", "");
  if (S.path) {
    ctx.strokeStyle = "rgba(29,34,48,.6)"; ctx.lineWidth = 1.5; ctx.setLineDash([4, 3]); ctx.beginPath();
    S.path.forEach((p, k) => { const [x, y] = toPx(p); k ? ctx.lineTo(x, y) : ctx.moveTo(x, y); });
    ctx.stroke(); ctx.setLineDash([]);
  }
  S.uploads.forEach((u) => star(toPx(u.map), u.anomalous ? "#d6336c" : "#2b8a3e"));
  if (S.marker) {
    const [x, y] = toPx(S.marker);
    ctx.strokeStyle = "#1d2230"; ctx.lineWidth = 2;
    ctx.beginPath(); ctx.moveTo(x - 9, y); ctx.lineTo(x + 9, y); ctx.moveTo(x, y - 9); ctx.lineTo(x, y + 9); ctx.stroke();
    ctx.beginPath(); ctx.arc(x, y, 4.5, 0, 2 * Math.PI); ctx.stroke();
  }
}

function star([x, y], colour) {
  const {ctx} = map;
  ctx.fillStyle = colour; ctx.strokeStyle = "#fff"; ctx.lineWidth = 1.5; ctx.beginPath();
  for (let k = 0; k < 10; k++) {
    const r = k % 2 ? 4.5 : 10, a = -Math.PI / 2 + k * Math.PI / 5;
    ctx.lineTo(x + r * Math.cos(a), y + r * Math.sin(a));
  }
  ctx.closePath(); ctx.fill(); ctx.stroke();
}

function nearest(px, py, radius) {
  let best = null, bd = radius * radius;
  S.state.coords.forEach((p, i) => {
    const [x, y] = toPx(p), d = (x - px) ** 2 + (y - py) ** 2;
    if (d < bd) { bd = d; best = i; }
  });
  return best;
}

function describe(i) {
  const st = S.state, parts = [`#${i}`];
  if (st.labels && st.labels[i] >= 0) parts.push(`class ${st.classes[st.labels[i]] ?? st.labels[i]}`);
  parts.push(`score ${fmt(st.scores[i])}`);
  if (st.flags) parts.push(st.flags[i] ? "anomalous" : "normal");
  return parts.join(" · ");
}

function legend() {
  const el = $("legend"), st = S.state;
  el.innerHTML = "";
  if (S.mode === "label" && st.labels) {
    const present = [...new Set(st.labels)].filter((y) => y >= 0).sort((a, b) => a - b);
    present.forEach((y) => {
      const k = document.createElement("span");
      k.className = "key";
      k.innerHTML = `<span class="dot" style="background:${PALETTE[y % PALETTE.length]}"></span>${escapeHtml(String(st.classes[y] ?? y))}`;
      el.appendChild(k);
    });
  } else {
    const [lo, hi] = scoreRange();
    const stops = [0, .25, .5, .75, 1].map((t) => ramp(t)).join(",");
    el.innerHTML = `<span class="key">${fmt(lo)} <span class="ramp" style="background:linear-gradient(90deg,${stops})"></span> ${fmt(hi)} nats</span>` +
      (st.flags ? `<span class="key"><span class="dot" style="border:1.5px solid #d6336c"></span>above threshold</span>` : "");
  }
}

// -- decoding ---------------------------------------------------------------------------------------
function condition() {
  const sel = $("class-select");
  return S.state.info.conditional === "y" ? {y: Number(sel.value)} : {};
}

async function decode(body) {
  // one request in flight; the newest pending one goes next (a dragged slider never queues up)
  if (S.busy) { S.pending = body; return; }
  S.busy = true;
  const t0 = performance.now();
  try {
    const r = await api("/api/decode", {...body, ...condition()});
    S.z = r.z; S.marker = r.map;
    show($("decoded"), r.view, 216);
    $("decoded-where").textContent = `map (${fmt(r.map[0])}, ${fmt(r.map[1])})`;
    syncSliders();
    drawMap();
    const ms = performance.now() - t0;  // request to drawn: what the user waits for
    window.vaekitTimings.push(ms);
    $("latency").textContent = `decoded in ${ms.toFixed(1)} ms`;
    $("decoded").dataset.version = String(window.vaekitTimings.length);
  } catch (e) {
    $("latency").innerHTML = `<span class="error">${escapeHtml(e.message)}</span>`;
  } finally {
    S.busy = false;
    if (S.pending) { const next = S.pending; S.pending = null; decode(next); }
  }
}

function buildSliders() {
  const el = $("sliders"), st = S.state;
  el.innerHTML = "";
  st.dims.forEach((d) => {
    const span = Math.max(3, Math.abs(d.low), Math.abs(d.high));
    const name = document.createElement("div");
    name.className = "name";
    name.innerHTML = `z<sub>${d.index}</sub> <small>${fmt(d.kl)} nats</small>`;
    const input = document.createElement("input");
    Object.assign(input, {type: "range", min: -span, max: span, step: span / 200, value: 0});
    input.dataset.dim = d.index;
    input.disabled = true;
    const val = document.createElement("div");
    val.className = "val"; val.textContent = "0.00";
    input.addEventListener("input", () => {
      if (!S.z) return;
      S.z[d.index] = Number(input.value);
      val.textContent = Number(input.value).toFixed(2);
      decode({z: S.z.slice(), index: S.selected ?? undefined});
    });
    el.append(name, input, val);
  });
}

function syncSliders() {
  document.querySelectorAll("#sliders input").forEach((input) => {
    const d = Number(input.dataset.dim);
    input.disabled = false;
    if (document.activeElement !== input) {
      input.value = S.z[d];
      input.nextSibling.textContent = Number(S.z[d]).toFixed(2);
    }
  });
}

function pick(i) {
  S.selected = i;
  $("picked").textContent = i === null ? "no example picked" : `picked ${describe(i)}`;
  $("set-a").disabled = $("set-b").disabled = i === null;
  if (i !== null && S.state.labels && S.state.info.conditional === "y") $("class-select").value = S.state.labels[i];
}

function setSlot(which, i) {
  S[which] = i;
  show($(`slot-${which}`), S.state.examples[i], 90);
  $("interp-go").disabled = S.a === null || S.b === null;
  drawMap();
}

async function interpolate() {
  const steps = 10;
  try {
    const r = await api("/api/interpolate", {a: S.a, b: S.b, steps, method: $("interp-method").value, ...condition()});
    const strip = $("strip");
    strip.innerHTML = "";
    const fit = Math.floor((strip.clientWidth - 4 * (steps - 1)) / steps);
    const kind = S.state.info.kind;
    const size = kind === "image" || kind === "table" ? Math.max(24, Math.min(64, fit))
      : kind === "series" ? Math.max(30, Math.floor(fit / 1.6)) : 120;
    strip.classList.toggle("column", kind === "text");
    r.frames.forEach((f) => {
      const d = document.createElement("div");
      d.className = "frame view";
      d.appendChild(viewNode(f, size));
      strip.appendChild(d);
    });
    S.path = r.map;
    drawMap();
  } catch (e) {
    $("strip").innerHTML = `<span class="error">${escapeHtml(e.message)}</span>`;
  }
}

// -- uploads ----------------------------------------------------------------------------------------
async function upload(file) {
  const out = $("upload-result");
  out.innerHTML = `<span class="muted">scoring ${escapeHtml(file.name)}…</span>`;
  try {
    const r = await api(`/api/upload?name=${encodeURIComponent(file.name)}`, file, true);
    out.innerHTML = "";
    S.uploads = r.items;
    if (r.examples > 1) {
      const what = r.highest_first ? `; the ${r.items.length} with the highest scores` : "";
      const flagged = r.flagged === null ? "" : `, ${r.flagged} above the threshold`;
      out.insertAdjacentHTML("beforeend", `<div class="muted small" data-role="summary">${r.examples} examples` +
        (r.scored < r.examples ? ` (the first ${r.scored} scored)` : "") + `${flagged}${what}</div>`);
    }
    const [lo, hi] = scoreRange();
    const top = Math.max(hi, r.threshold ?? hi, ...r.items.map((it) => it.score)) * 1.1;
    r.items.forEach((it) => {
      const row = document.createElement("div");
      row.className = "upload-item";
      const pair = document.createElement("div");
      pair.className = "pair";
      [[it.view, "yours"], [it.reconstruction, "reconstruction"]].forEach(([v, cap]) => {
        const cell = document.createElement("div");
        const box = document.createElement("div");
        box.className = "view small-view";
        box.appendChild(viewNode(v, 90));
        cell.appendChild(box);
        cell.insertAdjacentHTML("beforeend", `<div class="cap">${cap}</div>`);
        pair.appendChild(cell);
      });
      const verdict = it.anomalous === null ? "" : it.anomalous ? "anomalous" : "normal";
      const info = document.createElement("div");
      const thr = r.threshold === null ? "" : `<div class="thr" style="left:${Math.min(100, r.threshold / top * 100)}%"></div>`;
      info.innerHTML = (r.examples > 1 ? `<div class="muted small">#${it.index}</div>` : "") +
        `<div class="verdict ${it.anomalous ? "bad" : "good"}" data-role="verdict">${verdict}</div>` +
        `<div class="muted small" data-role="score">score ${fmt(it.score)} nats` +
        (r.threshold === null ? "" : ` (threshold ${fmt(r.threshold)})`) + `</div>` +
        `<div class="scorebar"><div class="fill" style="width:${Math.max(0, Math.min(100, it.score / top * 100))}%"></div>${thr}</div>`;
      row.append(pair, info);
      out.appendChild(row);
    });
    drawMap();
  } catch (e) {
    out.innerHTML = `<span class="error" data-role="error">${escapeHtml(e.message)}</span>`;
  }
}

// -- start ------------------------------------------------------------------------------------------
async function start() {
  const st = S.state = await api("/api/state");
  const info = st.info;
  $("run-meta").textContent = `${info.run} · ${info.model} (${info.arch}, ${info.likelihood}) · ${info.kind} ${info.shape.join("×")} · ` +
    `${info.latent_dim}-D latent · ${st.coords.length} ${st.split} examples`;
  $("axes-label").textContent = st.axes_label;
  $("threshold").textContent = st.threshold === null ? "no threshold (no validation data)" :
    `threshold ${fmt(st.threshold)} nats (${st.score_kind}; flags ${Math.round(st.contamination * 100)}% of validation data)`;
  if (!st.labels) { S.mode = "score"; document.querySelector('#colour-by [data-mode="label"]').disabled = true; }
  document.querySelectorAll("#colour-by button").forEach((b) => {
    b.classList.toggle("on", b.dataset.mode === S.mode);
    b.addEventListener("click", () => {
      S.mode = b.dataset.mode;
      document.querySelectorAll("#colour-by button").forEach((o) => o.classList.toggle("on", o === b));
      legend(); drawBase(); drawMap();
    });
  });
  if (info.conditional === "y") {
    $("class-picker").classList.remove("hidden");
    $("class-select").innerHTML = st.classes.map((c, i) => `<option value="${i}">${escapeHtml(String(c))}</option>`).join("");
    $("class-select").addEventListener("change", () => { if (S.z) decode({z: S.z.slice()}); });
  }
  const notes = [...st.cannot];
  if (info.kind === "text") notes.push("sentences are decoded greedily (the most likely word at each step)");
  $("notes").innerHTML = notes.length ? `<ul>${notes.map((n) => `<li>${escapeHtml(n)}</li>`).join("")}</ul>` : "";
  buildSliders();
  layoutMap();
  legend();
  const cv = $("map"), tip = $("tooltip");
  cv.addEventListener("mousemove", (ev) => {
    const r = cv.getBoundingClientRect(), x = ev.clientX - r.left, y = ev.clientY - r.top;
    const i = nearest(x, y, 8);
    if (i === null) { tip.classList.add("hidden"); S.hover = null; return; }
    if (i !== S.hover) {
      S.hover = i;
      const size = info.kind === "image" ? 84 : info.kind === "table" ? 216 : 120;
      show(tip.querySelector(".tip-view"), st.examples[i], size);
      tip.querySelector(".tip-text").textContent = describe(i);
    }
    tip.classList.remove("hidden");
    tip.style.left = Math.min(x + 14, r.width - tip.offsetWidth - 4) + "px";
    tip.style.top = Math.min(y + 14, r.height - tip.offsetHeight - 4) + "px";
  });
  cv.addEventListener("mouseleave", () => { tip.classList.add("hidden"); S.hover = null; });
  cv.addEventListener("click", (ev) => {
    const r = cv.getBoundingClientRect(), x = ev.clientX - r.left, y = ev.clientY - r.top;
    const i = nearest(x, y, 6);
    pick(i);
    if (i !== null) decode({z: st.codes[i].slice(), index: i});
    else decode({point: fromPx(x, y)});
  });
  $("set-a").addEventListener("click", () => setSlot("a", S.selected));
  $("set-b").addEventListener("click", () => setSlot("b", S.selected));
  $("interp-go").addEventListener("click", interpolate);
  $("upload").addEventListener("change", (ev) => { if (ev.target.files[0]) upload(ev.target.files[0]); });
  const drop = $("drop");
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault(); drop.classList.remove("over");
    if (ev.dataTransfer.files[0]) upload(ev.dataTransfer.files[0]);
  });
  window.addEventListener("resize", layoutMap);
  window.vaekitReady = true;
}

start().catch((e) => { $("run-meta").innerHTML = `<span class="error">${escapeHtml(e.message)}</span>`; });
