"""The page of the web view: plain HTML, CSS and JavaScript, no build step, no CDN (edge
boxes are often offline). It polls ``/api/state`` every second; each camera's picture is an
``<img>`` on its MJPEG stream."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>anomaly-edge live</title>
<style>
  :root { --ok: #2e7d32; --bad: #c62828; --muted: #666; }
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #222; }
  header { background: #1f2933; color: #fff; padding: 8px 16px; display: flex; gap: 16px;
           align-items: baseline; }
  header h1 { font-size: 16px; margin: 0; }
  header span { color: #cbd2d9; font-size: 12px; }
  main { padding: 12px 16px; }
  #cameras { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr));
             gap: 12px; }
  .camera { background: #fff; border-radius: 6px; box-shadow: 0 1px 3px #0002; padding: 8px; }
  .camera h2 { font-size: 15px; margin: 0 0 4px; display: flex; justify-content: space-between; }
  .camera img { width: 100%; max-height: 45vh; object-fit: contain; background: #000;
                border-radius: 4px; min-height: 120px; display: block; }
  .stats { font-variant-numeric: tabular-nums; color: #333; margin: 4px 0; }
  .state-running { color: var(--ok); } .state-failed { color: var(--bad); }
  .state-ended, .state-stopping { color: var(--muted); }
  .anomalies { color: var(--bad); font-weight: 600; }
  form { display: flex; gap: 6px; align-items: center; flex-wrap: wrap; }
  form input { width: 7em; }
  .msg { font-size: 12px; color: var(--muted); min-height: 1.2em; }
  h3 { font-size: 15px; margin: 16px 0 6px; }
  table { border-collapse: collapse; width: 100%; background: #fff; }
  td, th { padding: 4px 8px; border-bottom: 1px solid #e4e7eb; text-align: left;
           vertical-align: middle; }
  td img { height: 48px; border-radius: 3px; }
</style>
</head>
<body>
<header><h1>anomaly-edge live</h1><span id="model"></span><span id="clock"></span></header>
<main>
  <div id="cameras"></div>
  <h3>Latest events</h3>
  <table><thead><tr><th>time</th><th>camera</th><th>event</th><th>snapshot</th></tr></thead>
  <tbody id="events"></tbody></table>
</main>
<script>
"use strict";
window.aeState = null;
const built = new Set();
const fmt = (x, d = 1) => (x === null || x === undefined) ? "-" : Number(x).toFixed(d);
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
};

function buildCamera(cam) {
  const name = cam.name;
  const image = el("input", {id: "it-" + name, type: "number", step: "any", required: true});
  const pixel = el("input", {id: "pt-" + name, type: "number", step: "any", required: true});
  const form = el("form", {id: "form-" + name},
    el("label", {}, "image ", image), el("label", {}, "pixel ", pixel),
    el("button", {id: "apply-" + name, type: "submit"}, "apply"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const msg = document.getElementById("msg-" + name);
    const body = {image_threshold: Number(image.value), pixel_threshold: Number(pixel.value)};
    const r = await fetch("api/cameras/" + encodeURIComponent(name) + "/thresholds", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify(body)});
    const answer = await r.json();
    msg.textContent = r.ok ? "thresholds changed at " + new Date().toLocaleTimeString()
                           : "refused: " + (answer.detail || r.status);
    image.dataset.dirty = pixel.dataset.dirty = "";
  });
  for (const input of [image, pixel]) input.addEventListener("input", () => {
    input.dataset.dirty = "1";
  });
  const card = el("section", {className: "camera", id: "cam-" + name},
    el("h2", {}, el("span", {}, name), el("span", {id: "state-" + name})),
    el("img", {id: "img-" + name, alt: name, src: "stream/" + encodeURIComponent(name) + ".mjpg"}),
    el("div", {className: "stats", id: "stats-" + name}),
    form, el("div", {className: "msg", id: "msg-" + name}));
  document.getElementById("cameras").append(card);
  built.add(name);
}

function showCamera(cam) {
  if (!built.has(cam.name)) buildCamera(cam);
  const name = cam.name;
  const state = document.getElementById("state-" + name);
  state.textContent = cam.state + (cam.error ? ": " + cam.error : "");
  state.className = "state-" + cam.state;
  const latency = cam.latency_ms ? fmt(cam.latency_ms.p50, 0) + " / " + fmt(cam.latency_ms.p95, 0)
                                 : "-";
  const stats = document.getElementById("stats-" + name);
  stats.replaceChildren(
    el("span", {id: "fps-" + name}, fmt(cam.fps) + " fps"), " · latency p50/p95 ",
    latency + " ms · ", el("span", {id: "frames-" + name}, String(cam.frames)), " frames · ",
    el("span", {className: "anomalies"}, cam.anomalies + " anomalies"),
    " · dropped " + cam.dropped + " · undecodable " + cam.corrupt +
    " · reconnects " + cam.reconnects + " · " + cam.task);
  for (const [id, key] of [["it-", "image_threshold"], ["pt-", "pixel_threshold"]]) {
    const input = document.getElementById(id + name);
    if (document.activeElement !== input && !input.dataset.dirty) input.value = cam[key];
  }
}

function describe(e) {
  if (e.event === "thresholds_changed") {
    const parts = [];
    for (const k of ["image_threshold", "pixel_threshold"])
      if (e[k]) parts.push(k.replace("_", " ") + " " + e[k].old + " → " + e[k].new);
    return "thresholds changed by " + e.by + ": " + parts.join(", ");
  }
  return "anomaly, frame " + e.frame + ", score " + fmt(e.score, 3) +
         (e.boxes && e.boxes.length ? ", " + e.boxes.length + " region(s)" : "");
}

function showEvents(events) {
  const rows = events.map((e) => el("tr", {},
    el("td", {}, (e.time || "").replace("T", " ").replace("Z", "")),
    el("td", {}, e.source), el("td", {}, describe(e)),
    el("td", {}, e.snapshot ? el("img", {src: e.snapshot.replace(/^\\//, ""), loading: "lazy"})
                            : "")));
  document.getElementById("events").replaceChildren(...rows);
}

async function poll() {
  try {
    const r = await fetch("api/state", {cache: "no-store"});
    if (r.ok) {
      const state = await r.json();
      window.aeState = state;
      state.cameras.forEach(showCamera);
      showEvents(state.events);
      document.getElementById("model").textContent = state.model;
      const clock = new Date(state.time * 1000);
      document.getElementById("clock").textContent = clock.toLocaleTimeString();
    }
  } catch (err) { /* the run ended or the network blinked: try again */ }
  setTimeout(poll, 1000);
}
poll();
</script>
</body>
</html>
"""
