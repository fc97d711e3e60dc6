"""GET / — a page a person can use: drop an image, see the label, the probabilities as bars, the
Grad-CAM (or saliency) overlay, the model and data version, and the service's live numbers from /metrics.
Plain HTML + fetch(); no external assets (served offline, behind the API key if one is set)."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>visionflow</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;color:#222}
 h1{font-size:1.4rem} .muted{color:#666;font-size:.9rem} .row{display:flex;gap:1.5rem;flex-wrap:wrap;align-items:flex-start}
 #label{font-size:2.2rem;font-weight:600} .bar{display:flex;align-items:center;gap:.5rem;font-size:.85rem;margin:.1rem 0}
 .bar span{width:6rem;overflow:hidden;text-overflow:ellipsis;white-space:nowrap} .bar div{background:#3b82f6;height:.8rem}
 img{image-rendering:pixelated;max-width:14rem;border:1px solid #ddd} #error{color:#b91c1c} fieldset{border:1px solid #ddd}
</style></head><body>
<h1>visionflow — classify an image</h1>
<p class="muted" id="model">model: loading…</p>
<form id="form"><input type="file" id="file" name="image" accept="image/*"></form>
<details><summary class="muted">API key</summary><input id="key" type="password" placeholder="VISIONFLOW_API_KEY" size="40"></details>
<p id="error" role="alert"></p>
<div class="row" id="result" hidden>
 <div><div id="label"></div><div class="muted" id="confidence"></div><div id="bars"></div>
  <fieldset><legend class="muted">Was it right?</legend><select id="truth"></select> <button id="send" type="button">send feedback</button>
  <div class="muted" id="feedback"></div></fieldset>
  <p class="muted" id="rid"></p></div>
 <div><img id="preview" alt="your image"><br><img id="overlay" alt="saliency overlay" hidden><div class="muted"><span id="method">saliency</span>: where the answer came from</div></div>
</div>
<h2 style="font-size:1.1rem">Live</h2><p id="live" class="muted">…</p>
<script>
const $ = id => document.getElementById(id);
$("key").value = sessionStorage.getItem("vf-key") || "";
$("key").onchange = () => { sessionStorage.setItem("vf-key", $("key").value); refresh(); };
const auth = () => $("key").value ? {Authorization: "Bearer " + $("key").value} : {};
let lastId = null;
async function call(path, opts) {
  const r = await fetch(path, {...opts, headers: {...(opts && opts.headers || {}), ...auth()}});
  const body = r.headers.get("content-type")?.includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new Error((body && body.error) || (r.status + " " + r.statusText));
  return body;
}
function fmt(n) { return Number(n).toLocaleString("en"); }
$("file").onchange = async () => {
  const f = $("file").files[0]; if (!f) return;
  $("error").textContent = ""; $("preview").src = URL.createObjectURL(f);
  const form = () => { const d = new FormData(); d.append("image", f); return d; };
  try {
    const a = await call("/classify", {method: "POST", body: form()});
    lastId = a.request_id;
    $("label").textContent = a.class_name;
    $("confidence").textContent = "confidence " + (100 * a.confidence).toFixed(1) + " %";
    $("rid").textContent = "request id " + a.request_id;
    $("bars").innerHTML = "";
    for (const [c, p] of Object.entries(a.probabilities).sort((x, y) => y[1] - x[1])) {
      const row = document.createElement("div"); row.className = "bar";
      row.innerHTML = `<span></span><div style="width:${(p * 12).toFixed(2)}rem"></div><em>${(100 * p).toFixed(1)} %</em>`;
      row.querySelector("span").textContent = c; $("bars").appendChild(row);
    }
    $("truth").innerHTML = ""; for (const c of Object.keys(a.probabilities)) $("truth").add(new Option(c, c, false, c === a.class_name));
    $("feedback").textContent = ""; $("result").hidden = false;
    showModel(a);
    try { const e = await call("/explain", {method: "POST", body: form()}); $("overlay").src = e.explanation.png; $("overlay").hidden = false; $("method").textContent = e.explanation.method; }
    catch (e) { $("overlay").hidden = true; }
    refresh();
  } catch (e) { $("error").textContent = e.message; $("result").hidden = true; }
};
$("send").onclick = async () => {
  try {
    const r = await call("/feedback", {method: "POST", headers: {"content-type": "application/json"},
                                       body: JSON.stringify({request_id: lastId, label: $("truth").value})});
    $("feedback").textContent = (r.correct ? "thanks: it was right" : "thanks: noted as wrong") +
      ` — live accuracy ${(100 * r.live_accuracy).toFixed(1)} % over ${fmt(r.feedback_count)} answers`;
    refresh();
  } catch (e) { $("feedback").textContent = e.message; }
};
function showModel(m) {
  let text = `model: ${m.model.name} v${m.model.version} · data version ${(m.data_version || "?").slice(0, 12)}`;
  const r = m.rollout;
  if (r && r.challenger) text += ` · rollout: v${r.challenger.version} in ${r.stage}` + (r.stage === "canary" ? ` (${r.percent} % of clients)` : " (answers logged, never returned)");
  else if (r && r.served_by) text += ` · answered by the ${r.served_by} (${r.stage})`;
  $("model").textContent = text;
}
function parse(text) {
  const out = [];
  for (const line of text.split("\\n")) {
    if (!line || line[0] === "#") continue;
    const m = line.match(/^([a-zA-Z_:][\\w:]*)(\\{(.*)\\})?\\s+(\\S+)/); if (!m) continue;
    const labels = {}; (m[3] || "").replace(/(\\w+)="((?:[^"\\\\]|\\\\.)*)"/g, (_, k, v) => labels[k] = v);
    out.push({name: m[1], labels, value: parseFloat(m[4])});
  }
  return out;
}
async function refresh() {
  try { showModel(await call("/metadata")); } catch (e) { $("model").textContent = "model: " + e.message; }
  try {
    const s = parse(await (await fetch("/metrics", {headers: auth()})).text());
    const sum = (name, f) => s.filter(x => x.name === name && (!f || f(x.labels))).reduce((a, x) => a + x.value, 0);
    const served = sum("visionflow_requests_total", l => l.endpoint.startsWith("/classify"));
    const errors = sum("visionflow_request_errors_total", l => l.endpoint.startsWith("/classify"));
    const shed = sum("visionflow_shed_total");
    const t = sum("visionflow_request_duration_seconds_sum", l => l.endpoint === "/classify");
    const n = sum("visionflow_request_duration_seconds_count", l => l.endpoint === "/classify");
    let words = `${fmt(served)} classification requests served, ${fmt(errors)} refused or failed, ${fmt(shed)} shed as overload` +
      (n ? `; mean /classify time ${(1000 * t / n).toFixed(1)} ms` : "");
    for (const g of s.filter(x => x.name === "visionflow_live_accuracy")) {
      const k = sum("visionflow_live_accuracy_feedback", l => l.model_version === g.labels.model_version);
      words += `; live accuracy of v${g.labels.model_version}: ${(100 * g.value).toFixed(1)} % over ${fmt(k)} feedback`;
    }
    $("live").textContent = words + ".";
  } catch (e) { $("live").textContent = "metrics unavailable: " + e.message; }
}
refresh(); setInterval(refresh, 5000);
</script></body></html>
"""
