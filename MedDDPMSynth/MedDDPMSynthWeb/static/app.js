// The page only sends requests and shows the server's state; all work happens on the server.
"use strict";
const $ = (id) => document.getElementById(id);
let shownVersion = -1;

function showError(text) { $("error").textContent = text || ""; }

async function call(url, body) {
  const options = body === undefined ? { method: "POST" } :
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const reply = await fetch(url, options);
  const data = await reply.json().catch(() => ({ error: `HTTP ${reply.status}` }));
  showError(data.error);
  if (!data.error) show(data);
  return data;
}

function show(s) {
  $("mask").textContent = s.mask ? `mask: ${s.mask}` : "no mask loaded";
  $("progress").value = s.running ? s.fraction : (s.result ? 1 : 0);
  let state = s.running ? `${s.kind}: ${Math.round(100 * s.fraction)} %` : (s.result ? "done" : "idle");
  if (s.running && s.eta != null) state += `, about ${Math.ceil(s.eta)} s left`;
  if (s.queued) state += ` (${s.queued} queued)`;
  $("state").textContent = state;
  $("message").textContent = s.message || "";
  if (s.error) showError(s.error);
  $("generate").dataset.busy = s.running ? "1" : "0";
  $("regenerate").disabled = !s.can_regenerate;
  if (s.version !== shownVersion) {
    shownVersion = s.version;
    $("view").src = `/api/view.png?v=${s.version}`;
    $("view").dataset.version = s.version;
    $("view").dataset.result = s.result ? "1" : "0";
  }
}

function settings() {
  return { model: $("model").value, sampler: $("sampler").value, steps: +$("steps").value,
           samples: +$("samples").value, seed: +$("seed").value };
}

async function init() {
  const config = await (await fetch("/api/config")).json();
  for (const m of config.models) $("model").add(new Option(m, m, false, m === config.default_model));
  for (const s of config.samplers) $("sampler").add(new Option(s, s));
  $("file").addEventListener("change", async () => {
    const file = $("file").files[0];
    if (!file) return;
    if (file.size > config.upload_limit_mb * 1024 * 1024) { showError(`the file is larger than ${config.upload_limit_mb} MB`); return; }
    const form = new FormData();
    form.append("file", file, file.name);
    const reply = await fetch("/api/upload", { method: "POST", body: form });
    const data = await reply.json().catch(() => ({ error: `HTTP ${reply.status}` }));
    showError(data.error);
    if (!data.error) show(data);
  });
  $("generate").onclick = () => call("/api/generate", settings());
  $("regenerate").onclick = () => call("/api/regenerate", settings());
  $("cancel").onclick = () => call("/api/cancel");
  $("scale").onclick = () => call("/api/edit", { op: "scale", value: +$("factor").value });
  $("undo").onclick = () => call("/api/edit", { op: "undo" });
  $("remove").onclick = () => call("/api/edit", { op: "remove" });
  $("view").addEventListener("click", (e) => {
    if (!$("paintmode").checked) return;
    const v = $("view");  // picture pixels, whatever size the page shows it at
    const px = e.offsetX * v.naturalWidth / v.clientWidth, py = e.offsetY * v.naturalHeight / v.clientHeight;
    call("/api/edit", { op: "paint", value: [px, py], radius: +$("radius").value });
  });
  for (const b of document.querySelectorAll("[data-shift]")) {
    b.onclick = () => call("/api/edit", { op: "shift", value: b.dataset.shift.split(",").map((v) => v * $("step").value) });
  }
  setInterval(async () => {
    const reply = await fetch("/api/status");
    if (reply.ok) show(await reply.json());
  }, 400);
}
init();
