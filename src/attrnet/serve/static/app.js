// attrnet's page: choose or drop images, one POST /v1/predict per image, bars of probability per attribute.
// Plain JavaScript, no dependencies: the page works offline and under a strict Content-Security-Policy.
"use strict";

const state = { model: null, apiKey: sessionStorage.getItem("attrnet-api-key") || "", pending: 0 };
const $ = (id) => document.getElementById(id);

function headers() {
  return state.apiKey ? { "X-API-Key": state.apiKey } : {};
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-") || key.startsWith("aria-") || key === "role") node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

const pretty = (name) => name.replace(/_/g, " ");
const fmt = (x, digits = 3) => (x === null || x === undefined || Number.isNaN(x) ? "n/a" : Number(x).toFixed(digits));

async function loadModel() {
  let response;
  try {
    response = await fetch("/v1/model", { headers: headers() });
  } catch (err) {
    $("model-summary").textContent = "The server cannot be reached.";
    return;
  }
  if (response.status === 401) {
    $("key-form").hidden = false;
    $("model-summary").textContent = "This server needs an API key.";
    $("api-key").focus();
    return;
  }
  if (!response.ok) {
    $("model-summary").textContent = `Cannot read the model (${await errorText(response)}).`;
    return;
  }
  state.model = await response.json();
  $("key-form").hidden = true;
  showModel(state.model);
}

function showModel(model) {
  const n = model.attributes.length;
  const size = model.image_size.join(" x ");
  $("model-name").textContent = `${n} attribute${n === 1 ? "" : "s"}` +
    (model.backbone ? `, ${model.backbone}` : "") + `, ${size} px ${model.grayscale ? "grey" : "RGB"}`;
  const summary = $("model-summary");
  summary.textContent = "";
  const m = model.test_metrics;
  if (m && m.mean_accuracy !== null && m.mean_accuracy !== undefined) {
    const split = m.split || "test";
    summary.append(`Mean ${split} accuracy `, el("strong", { id: "test-accuracy", text: fmt(m.mean_accuracy) }),
      " against a majority-class baseline of ", el("strong", { id: "baseline-accuracy", text: fmt(model.majority_baseline) }),
      ` (${m.n_images ?? "?"} ${split} images).`);
  } else {
    summary.textContent = "No test metrics were recorded with this model.";
  }
  if (model.limits) {
    $("hint").textContent = `JPEG, PNG, GIF, WebP, BMP or TIFF; one or several at once (up to ${(model.limits.max_upload_bytes / 2 ** 20).toFixed(0)} MB each).`;
  }
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.error || `HTTP ${response.status}`;
  } catch (err) {
    return `HTTP ${response.status}`;
  }
}

function addFiles(fileList) {
  const files = Array.from(fileList);
  if (!files.length) return;
  $("clear").disabled = false;
  for (const file of files) predictOne(file);
}

async function predictOne(file) {
  const card = el("article", { class: "result loading", "data-file": file.name, "data-state": "loading" });
  const img = el("img", { alt: "" });
  if (file.type.startsWith("image/")) img.src = URL.createObjectURL(file);
  const note = el("p", { text: "predicting\u2026" });
  card.append(el("div", { class: "result-head" }, img, el("div", {}, el("h2", { text: file.name }), note)));
  $("results").append(card);
  state.pending += 1;
  updateStatus();
  const limit = state.model && state.model.limits ? state.model.limits.max_upload_bytes : Infinity;
  try {
    if (file.size > limit) throw new Error(`the file is ${(file.size / 2 ** 20).toFixed(1)} MB; the server takes at most ${(limit / 2 ** 20).toFixed(0)} MB`);
    const form = new FormData();
    form.append("file", file, file.name);
    const response = await fetch("/v1/predict", { method: "POST", body: form, headers: headers() });
    if (!response.ok) throw new Error(await errorText(response));
    const body = await response.json();
    if (body.results[0].faces) showFaces(card, note, img.src, body.results[0], body.groups || null, body.attributes);
    else showResult(card, note, body.results[0], body.groups || null, body.attributes);
  } catch (err) {
    card.classList.add("error");
    card.dataset.state = "error";
    note.replaceWith(el("p", { class: "error-text", role: "alert", text: `Not predicted: ${err.message}` }));
  } finally {
    card.classList.remove("loading");
    state.pending -= 1;
    updateStatus();
  }
}

function showResult(card, note, result, groups, order) {
  const entries = order.map((name) => ({ name, ...result.attributes[name] }));
  const present = entries.filter((e) => e.decision === 1).length;
  note.textContent = `${present} of ${entries.length} attributes present`;
  card.classList.toggle("nothing-present", present === 0);
  card.append(el("p", { class: "none-present", text: "No attribute is at or above its threshold." }));
  appendGroups(card, entries, groups);
  card.dataset.state = "done";
}

function appendGroups(parent, entries, groups) {
  for (const [title, members] of grouped(entries, groups)) {
    const section = el("section", { class: "group" });
    if (title) section.append(el("h3", { text: pretty(title) }));
    const list = el("ul", { class: "attrs" });
    members.sort((a, b) => b.probability - a.probability);  // most confidently present first
    for (const e of members) list.append(attributeRow(e));
    section.append(list);
    parent.append(section);
  }
}

// A face model: the photo with a numbered box on each face found (largest first), then each face's attributes.
function showFaces(card, note, src, result, groups, order) {
  const [width, height] = result.size;
  const n = result.faces.length;
  note.textContent = n ? `${n} face${n === 1 ? "" : "s"} found` : "No face found in this photo.";
  card.dataset.faces = String(n);
  const photo = el("figure", { class: "photo" }, el("img", { src, alt: `the photo, ${n} face${n === 1 ? "" : "s"} marked` }));
  const pct = (x, of) => `${(100 * x / of).toFixed(3)}%`;
  result.faces.forEach((face, i) => {
    const [x1, y1, x2, y2] = face.box;
    const box = el("div", { class: "facebox", "data-face": String(i), title: `face ${i + 1}, score ${fmt(face.score, 2)}` },
      el("span", { text: String(i + 1) }));
    Object.assign(box.style, { left: pct(x1, width), top: pct(y1, height), width: pct(x2 - x1, width), height: pct(y2 - y1, height) });
    photo.append(box);
  });
  card.append(photo);
  result.faces.forEach((face, i) => {
    const entries = order.map((name) => ({ name, ...face.attributes[name] }));
    const present = entries.filter((e) => e.decision === 1).length;
    const section = el("section", { class: "face", "data-face": String(i) },
      el("h3", { class: "face-title", text: `Face ${i + 1}: ${present} of ${entries.length} attributes present` }));
    appendGroups(section, entries, groups);
    card.append(section);
  });
  card.dataset.state = "done";
}

function grouped(entries, groups) {
  if (!groups) return [[null, entries]];
  const byName = new Map(entries.map((e) => [e.name, e]));
  const out = [];
  const seen = new Set();
  for (const [title, names] of Object.entries(groups)) {
    const members = names.filter((n) => byName.has(n) && !seen.has(n)).map((n) => byName.get(n));
    members.forEach((e) => seen.add(e.name));
    if (members.length) out.push([title, members]);
  }
  const rest = entries.filter((e) => !seen.has(e.name));
  if (rest.length) out.push(["Other", rest]);
  return out;
}

function attributeRow(e) {
  const yes = e.decision === 1;
  const pct = (x) => `${Math.max(0, Math.min(100, x * 100)).toFixed(1)}%`;
  const fill = el("span", { class: "fill" });
  fill.style.width = pct(e.probability);
  const mark = el("span", { class: "mark" });
  mark.style.left = pct(e.threshold);
  const label = `${pretty(e.name)}: probability ${fmt(e.probability, 2)}, threshold ${fmt(e.threshold, 2)}, ${yes ? "present" : "absent"}`;
  return el("li", {
    class: `attr ${yes ? "present" : "absent"}`, "data-attribute": e.name, "data-decision": String(e.decision),
    "data-probability": String(e.probability), title: label,
  },
  el("span", { class: "name", text: pretty(e.name) }),
  el("span", { class: "bar", role: "img", "aria-label": label }, fill, mark),
  el("span", { class: "value", text: fmt(e.probability, 2) }),
  el("span", { class: "decision", text: yes ? "\u2713 yes" : "\u2717 no" }));
}

function updateStatus() {
  const done = document.querySelectorAll(".result[data-state=done]").length;
  const failed = document.querySelectorAll(".result[data-state=error]").length;
  $("status").textContent = state.pending ? `Predicting ${state.pending} image${state.pending === 1 ? "" : "s"}\u2026`
    : (done || failed ? `${done} image${done === 1 ? "" : "s"} predicted` + (failed ? `, ${failed} not` : "") + "." : "");
}

function setUp() {
  const input = $("file");
  input.addEventListener("change", () => { addFiles(input.files); input.value = ""; });
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (ev) => { ev.preventDefault(); drop.classList.add("dragging"); });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("dragging"));
  }
  drop.addEventListener("drop", (ev) => { ev.preventDefault(); addFiles(ev.dataTransfer.files); });
  // a file dropped beside the zone must not make the browser navigate away to it
  window.addEventListener("dragover", (ev) => ev.preventDefault());
  window.addEventListener("drop", (ev) => ev.preventDefault());
  $("only-present").addEventListener("change", (ev) => $("results").classList.toggle("only-present", ev.target.checked));
  $("clear").addEventListener("click", () => {
    for (const img of document.querySelectorAll(".result img")) if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    $("results").replaceChildren();
    $("clear").disabled = true;
    updateStatus();
  });
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.apiKey = $("api-key").value;
    sessionStorage.setItem("attrnet-api-key", state.apiKey);
    loadModel();
  });
  loadModel();
}

document.addEventListener("DOMContentLoaded", setUp);
