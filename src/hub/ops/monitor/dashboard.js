// The tej-hub dashboard: polls /varz, /connz and /subsz once a second and draws what it reads.
// No dependencies. What it shows is also in the DOM (ids, data-* attributes) for tests.
"use strict";

const HISTORY = 60;
const samples = []; // {t (the hub's uptime in ms), framesIn, bytesIn, framesOut}
const rates = [];   // {frames, bytes}

function human(n) {
  const units = ["", "K", "M", "G", "T"];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i === 0 ? Math.round(n) : n.toFixed(1)) + units[i];
}

function setText(id, text) {
  const el = document.getElementById(id);
  if (el) el.textContent = text;
  return el;
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = String(text);
  if (cls) td.className = cls;
  return td;
}

function drawChart() {
  // Two bands, one per series, each on its own scale: frames/s on top, bytes/s below.
  const canvas = document.getElementById("chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, band = h / 2, pad = 14;
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#ddd";
  ctx.beginPath(); ctx.moveTo(0, band); ctx.lineTo(w, band); ctx.stroke();
  const series = [["frames", "#1f77b4", "frames/s"], ["bytes", "#ff7f0e", "bytes/s"]];
  series.forEach(([key, color, label], n) => {
    const top = n * band, max = Math.max(1, ...rates.map(r => r[key]));
    ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
    rates.forEach((r, i) => {
      const x = w - (rates.length - 1 - i) * (w / (HISTORY - 1));
      const y = top + band - 2 - (r[key] / max) * (band - pad - 2);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
    ctx.fillStyle = color;
    ctx.fillText(label + " (max " + human(max) + ")", 6, top + 11);
  });
}

function showCluster(c) {
  const line = document.getElementById("cluster");
  line.hidden = !c;
  if (!c) return;
  setText("cluster-hub", c.hub);
  const link = setText("cluster-link", c.connected ? "connected" : "disconnected");
  link.className = c.connected ? "" : "down";
  setText("cluster-remote", c.remote_hubs + (c.remote_hub_names.length ? " (" + c.remote_hub_names.join(", ") + ")" : ""));
  setText("cluster-out", human(c.bytes_out));
  setText("cluster-in", human(c.bytes_in));
  setText("cluster-dropped", c.dropped_frames);
  setText("cluster-lost", c.lost_messages);
  setText("cluster-slow", c.slow_consumers);
}

function showStore(st) {
  const section = document.getElementById("store");
  section.hidden = !st;
  if (!st) return;
  setText("store-dir", st.dir);
  setText("store-sync", st.sync);
  setText("store-frames", st.frames);
  setText("store-bytes", human(st.bytes));
  setText("store-syncs", st.syncs);
  setText("store-refused", st.refused_full).className = st.refused_full > 0 ? "bad" : "";
  setText("store-delivered", st.delivered);
  setText("store-redelivered", st.redelivered);
  setText("store-dead", st.dead_lettered);
  document.querySelector("#store-codes tbody").replaceChildren(...st.codes.map(code => {
    const tr = document.createElement("tr");
    tr.dataset.storedCode = String(code.code);
    tr.append(cell(code.code), cell(code.frames), cell(human(code.bytes)), cell(code.first_seq),
      cell(code.last_seq), cell(code.segments),
      cell(code.oldest_age_seconds === null ? "-" : code.oldest_age_seconds));
    return tr;
  }));
  const rows = st.subscriptions.flatMap(sub => sub.codes.map(code => {
    const tr = document.createElement("tr");
    tr.dataset.durable = sub.name;
    tr.append(cell(sub.name, "text"), cell(sub.attached ? "yes" : "no", "text"), cell(code.code),
      cell(code.acked), cell(code.unacked_frames), cell(human(code.unacked_bytes)),
      cell(code.redelivered), cell(code.dead_lettered));
    return tr;
  }));
  document.querySelector("#store-subscriptions tbody").replaceChildren(...rows);
}

function showVarz(v) {
  setText("version", v.version);
  setText("listen", v.listen);
  setText("uptime", v.uptime_seconds);
  const state = setText("state", v.draining ? "draining" : "serving");
  state.className = v.draining ? "draining" : "";
  setText("loaded", v.config_loaded_at);
  setText("connections-open", v.connections);
  setText("pending", human(v.pending_bytes));
  setText("slow", v.slow_consumers);
  setText("dropped", v.dropped_frames);
  setText("rss", human(v.rss_bytes) + "B");
  showCluster(v.cluster);
  showStore(v.store);
  // Rates on the hub's clock over the last second or more of samples: right whatever the
  // browser's timers do (a background tab, or a headless browser's virtual time).
  samples.push({ t: v.uptime_ms, framesIn: v.frames_in, bytesIn: v.bytes_in, framesOut: v.frames_out });
  if (samples.length > 2 * HISTORY) samples.shift();
  const last = samples[samples.length - 1];
  let base = samples[0];
  for (const s of samples) if (s.t <= last.t - 1000) base = s;
  if (last.t > base.t) {
    const dt = (last.t - base.t) / 1000;
    const rate = {
      frames: (last.framesIn - base.framesIn) / dt,
      bytes: (last.bytesIn - base.bytesIn) / dt,
      framesOut: (last.framesOut - base.framesOut) / dt,
    };
    rates.push(rate);
    if (rates.length > HISTORY) rates.shift();
    for (const [id, value] of [["rate-frames", rate.frames], ["rate-bytes", rate.bytes],
                               ["rate-frames-out", rate.framesOut]]) {
      const el = setText(id, human(value));
      el.dataset.value = String(Math.round(value));
    }
    drawChart();
  }
}

function showConnections(c) {
  const body = document.querySelector("#connections tbody");
  body.replaceChildren(...c.connections.map(conn => {
    const tr = document.createElement("tr");
    tr.dataset.session = String(conn.session);
    tr.dataset.codes = conn.subscriptions.join(",");
    tr.dataset.pending = String(conn.pending_bytes);
    if (conn.pending_bytes > 0 || conn.dropped_frames > 0) tr.className = "slow";
    tr.append(cell(conn.session), cell(conn.peer, "text"), cell(conn.subscriptions.join(" "), "text"),
      cell(conn.echo ? "on" : "off", "text"), cell(conn.slow_consumer, "text"),
      cell(conn.pending_bytes), cell(conn.frames_in), cell(conn.frames_out),
      cell(human(conn.bytes_in)), cell(human(conn.bytes_out)), cell(conn.dropped_frames),
      cell(conn.idle_seconds));
    return tr;
  }));
}

function showCodes(s) {
  const body = document.querySelector("#codes tbody");
  body.replaceChildren(...s.codes.map(code => {
    const tr = document.createElement("tr");
    tr.dataset.code = String(code.code);
    tr.dataset.subscribers = String(code.subscribers);
    tr.append(cell(code.code), cell(code.subscribers), cell(code.frames), cell(human(code.bytes)));
    return tr;
  }));
}

async function getJson(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(path + ": " + response.status);
  return response.json();
}

async function refresh() {
  try {
    const [v, c, s] = await Promise.all([getJson("/varz"), getJson("/connz"), getJson("/subsz")]);
    showVarz(v);
    showConnections(c);
    showCodes(s);
    setText("error", "");
  } catch (e) {
    setText("error", "cannot reach the hub: " + e.message);
  }
  document.body.dataset.refreshed = String((Number(document.body.dataset.refreshed) || 0) + 1);
}

refresh();
setInterval(refresh, 1000);
