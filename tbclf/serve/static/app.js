// The tbclf page: upload one X-ray, show P(TB), the decision and the Grad-CAM overlay.
"use strict";

const $ = (id) => document.getElementById(id);
let canExplain = false;
let camUrl = null;

function setState(state) {
  document.body.dataset.state = state;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  setState("error");
}

async function errorText(response) {
  try {
    const body = await response.json();
    return `${response.status}: ${body.detail || body.error || response.statusText}`;
  } catch (_) {
    return `${response.status}: ${response.statusText}`;
  }
}

async function loadHealth() {
  const response = await fetch("/health");
  if (!response.ok) {
    showError(`The server is not ready (${await errorText(response)}).`);
    return;
  }
  const health = await response.json();
  const m = health.model;
  canExplain = health.explain;
  $("model").textContent =
    `Model ${m.name} (${m.architecture || m.format}, ${m.format}, version ${m.version}), ` +
    `operating threshold ${m.threshold.toFixed(3)}` +
    (canExplain ? "" : "; Grad-CAM needs a .ckpt model");
}

function form(file) {
  const data = new FormData();
  data.append("file", file, file.name);
  return data;
}

async function analyse(file) {
  $("error").hidden = true;
  setState("working");
  const response = await fetch("/predict?include_input=true", { method: "POST", body: form(file) });
  if (!response.ok) {
    $("result").hidden = true;
    showError(await errorText(response));
    return;
  }
  const r = await response.json();
  $("prob").textContent = r.prob_tb.toFixed(3);
  $("prob").dataset.value = String(r.prob_tb);
  $("bar-fill").style.width = `${(100 * r.prob_tb).toFixed(1)}%`;
  $("bar-fill").className = r.tb_suspected ? "positive" : "negative";
  $("bar-threshold").style.left = `${(100 * r.threshold).toFixed(1)}%`;
  $("threshold-label").textContent = `threshold ${r.threshold.toFixed(3)}`;
  $("decision").textContent = r.tb_suspected ? "TB suspected" : "TB not suggested";
  $("decision").className = r.tb_suspected ? "positive" : "negative";
  $("triage").textContent = r.triage;
  $("scope").textContent = r.triage_scope;
  $("input-image").src = r.input_image;
  $("result").hidden = false;
  $("cam-figure").hidden = true;
  if (canExplain) {
    const cam = await fetch("/explain", { method: "POST", body: form(file) });
    if (!cam.ok) {
      showError(`Grad-CAM failed: ${await errorText(cam)}`);
      return;
    }
    if (camUrl) URL.revokeObjectURL(camUrl);
    camUrl = URL.createObjectURL(await cam.blob());
    $("cam-image").src = camUrl;
    $("cam-figure").hidden = false;
  }
  setState("done");
}

function pick(files) {
  if (files && files.length) {
    analyse(files[0]).catch((e) => showError(`Request failed: ${e}`));
  }
}

$("file").addEventListener("change", (e) => pick(e.target.files));
const drop = $("drop");
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  pick(e.dataTransfer.files);
});
loadHealth().catch((e) => showError(`Cannot reach the server: ${e}`));
