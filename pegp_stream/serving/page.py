"""The operator's status page: self-contained HTML and JavaScript (no CDN: clusters are often offline).
It polls /v1/status every 2 s and draws the prequential accuracy curve with boundaries on a canvas."""

STATUS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pegp-stream</title><link rel="icon" href="data:,">
<style>
 body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
 h1{font-size:20px;margin:0 0 4px} .sub{color:#666;margin-bottom:16px}
 .row{display:flex;gap:16px;flex-wrap:wrap} .card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px}
 .num{font-size:22px;font-weight:600} table{border-collapse:collapse} td,th{padding:2px 10px;text-align:right}
 th{color:#666;font-weight:500} canvas{background:#fff;border:1px solid #ddd;border-radius:6px}
</style></head><body>
<h1>pegp-stream learner</h1><div class="sub" id="sub">loading...</div>
<div class="row">
 <div class="card"><div>records learned</div><div class="num" id="records">-</div></div>
 <div class="card"><div>prequential accuracy (window)</div><div class="num" id="accuracy">-</div></div>
 <div class="card"><div>throughput (records/s)</div><div class="num" id="throughput">-</div></div>
 <div class="card"><div>lag (records)</div><div class="num" id="lag">-</div></div>
 <div class="card"><div>model version</div><div class="num" id="version">-</div></div>
</div>
<h2 style="font-size:16px">Prequential accuracy over records
 (blue: windowed, grey: cumulative, dashed red: boundaries)</h2>
<canvas id="curve" width="900" height="300"></canvas>
<div class="row" style="margin-top:16px">
 <div class="card"><b>Accuracy per segment</b><table id="segments"></table></div>
 <div class="card"><b>Basis rank per protected space</b><table id="ranks"></table></div>
</div>
<script>
"use strict";
function rows(table, entries, format) {
  const el = document.getElementById(table);
  el.replaceChildren();
  for (const [key, value] of entries) {
    const tr = document.createElement("tr");
    const th = document.createElement("th"); th.textContent = key;
    const td = document.createElement("td"); td.textContent = format(value);
    tr.append(th, td); el.append(tr);
  }
}
function draw(status) {
  const canvas = document.getElementById("curve"), ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 30;
  ctx.clearRect(0, 0, w, h);
  const maxX = Math.max(1, status.records_learned, ...status.curve.map(p => p[0]));
  const x = r => pad + (w - 2 * pad) * r / maxX, y = a => h - pad - (h - 2 * pad) * a;
  ctx.strokeStyle = "#bbb"; ctx.beginPath(); ctx.moveTo(pad, y(0)); ctx.lineTo(w - pad, y(0));
  ctx.moveTo(pad, y(0)); ctx.lineTo(pad, y(1)); ctx.stroke();
  ctx.fillStyle = "#666"; ctx.fillText("1.0", 4, y(1) + 4); ctx.fillText("0", 14, y(0) + 4);
  ctx.setLineDash([4, 4]); ctx.strokeStyle = "#c33";
  for (const b of status.boundaries) { ctx.beginPath(); ctx.moveTo(x(b), y(0)); ctx.lineTo(x(b), y(1)); ctx.stroke(); }
  ctx.setLineDash([]);
  for (const [index, color] of [[2, "#999"], [1, "#1f77b4"]]) {  // cumulative grey, windowed blue on top
    ctx.strokeStyle = color; ctx.beginPath();
    status.curve.forEach((p, i) => i ? ctx.lineTo(x(p[0]), y(p[index])) : ctx.moveTo(x(p[0]), y(p[index])));
    ctx.stroke();
  }
  canvas.dataset.points = String(status.curve.length);
}
async function refresh() {
  try {
    const status = await (await fetch("/v1/status")).json();
    const last = status.curve.length ? status.curve[status.curve.length - 1] : null;
    document.getElementById("records").textContent = status.records_learned;
    document.getElementById("accuracy").textContent = last ? last[1].toFixed(3) : "-";
    document.getElementById("throughput").textContent = status.throughput.toFixed(1);
    document.getElementById("lag").textContent = Object.values(status.lag).reduce((a, b) => a + b, 0);
    document.getElementById("version").textContent = status.version;
    document.getElementById("sub").textContent = "updated " + new Date().toLocaleTimeString() +
      ", " + status.boundaries.length + " boundaries";
    rows("segments", Object.entries(status.segment_accuracy), v => v.toFixed(3));
    rows("ranks", Object.entries(status.ranks), v => v);
    draw(status);
  } catch (error) {
    document.getElementById("sub").textContent = "cannot reach the learner: " + error;
  }
}
refresh();
setInterval(refresh, 2000);
</script></body></html>
"""
