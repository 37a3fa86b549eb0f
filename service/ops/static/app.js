// The page at /: try images, read the model's card, evaluate, watch live traffic. Plain DOM, no
// dependencies; every request goes to this server (the Content-Security-Policy allows nothing else).
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "fashion-serving-api-key";
const LIVE_POINTS = 150; // 5 minutes at one reading every 2 s
const state = { defaultModel: null, classNames: [], live: [], liveTimer: null };

// ---- small helpers ----

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("aria-") || name === "role" || name === "scope") node.setAttribute(name, value);
    else node[name] = value;
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

const percent = (value, digits = 1) => `${(100 * value).toFixed(digits)} %`;
const fixed = (value, digits = 4) => (value == null ? "–" : Number(value).toFixed(digits));

function bars(names, values) {
  return el("ol", { class: "bars" }, ...names.map((name, i) => {
    const fill = el("div", { class: "fill" });
    fill.style.width = `${Math.max(0, Math.min(1, values[i])) * 100}%`;
    return el("li", {},
      el("span", { text: name }),
      el("div", { class: "track", "aria-hidden": "true" }, fill),
      el("span", { class: "value", text: percent(values[i]) }));
  }));
}

// ---- the API, with the key when the server asks for one ----

let keyPrompt = null;

function askKey(message) {
  if (!keyPrompt) {
    keyPrompt = new Promise((resolve) => {
      const dialog = $("key-dialog");
      $("key-message").textContent = message;
      $("key").value = "";
      dialog.addEventListener("close", () => {
        keyPrompt = null;
        const key = $("key").value.trim();
        resolve(dialog.returnValue === "ok" && key ? key : null);
      }, { once: true });
      dialog.showModal();
      $("key").focus();
    });
  }
  return keyPrompt;
}

async function api(path, options = {}) {
  for (;;) {
    const headers = new Headers(options.headers || {});
    const key = sessionStorage.getItem(KEY);
    if (key) headers.set("Authorization", `Bearer ${key}`);
    const response = await fetch(path, { ...options, headers });
    if (response.status !== 401) return response;
    sessionStorage.removeItem(KEY);
    $("key-button").hidden = false;
    const entered = await askKey(key
      ? "That key was not accepted. Enter the API key of this service."
      : "This service needs an API key. It is kept for this tab only.");
    if (!entered) return response;
    sessionStorage.setItem(KEY, entered);
  }
}

const READABLE = {
  401: "An API key is needed",
  408: "The upload was too slow",
  413: "Too large",
  415: "Not an image this service can read",
  422: "This input cannot be classified",
  503: "The service is busy or not ready; try again",
  504: "No answer in time; try again",
};

async function problem(response) {
  let message = response.statusText;
  try {
    const body = await response.json();
    message = body.error?.message ?? body.error ?? message;
  } catch { /* not JSON: keep the status text */ }
  const lead = READABLE[response.status] ?? `The service answered ${response.status}`;
  return `${lead} (${response.status}): ${message}`;
}

async function getJSON(path, options) {
  const response = await api(path, options);
  if (!response.ok) throw new Error(await problem(response));
  return response.json();
}

// ---- tabs ----

function selectTab(tab) {
  for (const other of document.querySelectorAll('[role="tab"]')) {
    const selected = other === tab;
    other.setAttribute("aria-selected", String(selected));
    other.tabIndex = selected ? 0 : -1;
    $(other.getAttribute("aria-controls")).hidden = !selected;
  }
  if (tab.id === "tab-model") showModel($("model-select").value || state.defaultModel);
  if (tab.id === "tab-live") startLive(); else stopLive();
}

function setUpTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (!step) return;
      const next = tabs[(i + step + tabs.length) % tabs.length];
      next.focus();
      selectTab(next);
    });
  });
}

// ---- try images ----

function classify(file, label) {
  const original = el("img", { alt: `The image sent: ${label}` });
  original.src = URL.createObjectURL(file);
  const outcome = el("div", { class: "outcome" }, el("p", { class: "name", text: label }), el("p", { text: "Classifying…" }));
  const seen = el("figure", {}, el("p", { text: "…" }));
  const card = el("li", { class: "card" }, el("figure", {}, original, el("figcaption", { text: "Sent" })), seen, outcome);
  $("results").prepend(card);

  const form = new FormData();
  form.append("files", file, file.name || "image");
  api("/predict?include=input", { method: "POST", body: form })
    .then(async (response) => {
      if (!response.ok) throw new Error(await problem(response));
      const body = await response.json();
      showPrediction(body, body.predictions[0], seen, outcome, label);
    })
    .catch((error) => {
      seen.replaceChildren();
      outcome.replaceChildren(el("p", { class: "name", text: label }),
        el("p", { class: "note error", role: "alert", text: error.message || String(error) }));
    });
}

function showPrediction(body, prediction, seen, outcome, label) {
  seen.replaceChildren(
    el("img", { class: "seen", src: prediction.input, alt: "The 28 by 28 image the model saw" }),
    el("figcaption", { text: "What the model saw" }));
  const notes = [];
  if (prediction.ood === true) {
    notes.push(el("p", { class: "note ood", role: "note",
      text: "This does not look like the clothing the model knows: treat the class with care." }));
  } else if (prediction.ood === false) {
    notes.push(el("p", { class: "note ok", text: "Looks like the items the model was trained on." }));
  }
  outcome.replaceChildren(
    el("p", { class: "name", text: `${label} · version ${body.model.version}` }),
    el("p", { class: "top" }, el("strong", { class: "top-class", text: prediction.class_name }),
      ` ${percent(prediction.confidence)}`),
    bars(body.class_names, prediction.probabilities),
    ...notes);
}

function classifyAll(files) {
  for (const file of files) classify(file, file.name || "pasted image");
}

function setUpInputs() {
  for (const id of ["files", "camera"]) {
    $(id).addEventListener("change", (event) => {
      classifyAll([...event.target.files]);
      event.target.value = "";
    });
  }
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    classifyAll([...event.dataTransfer.files]);
  });
  document.addEventListener("paste", (event) => {
    const files = [...(event.clipboardData?.files ?? [])];
    if (files.length) {
      event.preventDefault();
      classifyAll(files);
    }
  });
}

// ---- draw ----

function setUpDrawing() {
  const canvas = $("canvas");
  const pen = canvas.getContext("2d");
  const clear = () => { pen.fillStyle = "#fff"; pen.fillRect(0, 0, canvas.width, canvas.height); };
  clear();
  let drawing = false;
  const point = (event) => {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * canvas.width / box.width, (event.clientY - box.top) * canvas.height / box.height];
  };
  canvas.addEventListener("pointerdown", (event) => {
    drawing = true;
    canvas.setPointerCapture(event.pointerId);
    pen.beginPath();
    pen.moveTo(...point(event));
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    Object.assign(pen, { lineWidth: 22, lineCap: "round", lineJoin: "round", strokeStyle: "#111" });
    pen.lineTo(...point(event));
    pen.stroke();
  });
  for (const end of ["pointerup", "pointercancel"]) canvas.addEventListener(end, () => { drawing = false; });
  $("clear-drawing").addEventListener("click", clear);
  $("classify-drawing").addEventListener("click", () => {
    canvas.toBlob((blob) => classify(new File([blob], "drawing.png", { type: "image/png" }), "Drawing"), "image/png");
  });
}

// ---- the model ----

async function loadHeader() {
  try {
    const [served, models] = await Promise.all([getJSON("/model"), getJSON("/models")]);
    state.defaultModel = served.name;
    state.classNames = served.class_names;
    $("served").textContent = `${served.name}, version ${served.version}, trained ${served.created_at.slice(0, 10)}`;
    const select = $("model-select");
    select.replaceChildren(...models.models.map((m) => el("option", { value: m.name, text: m.name, selected: m.default })));
    $("model-picker").hidden = models.models.length < 2;
  } catch (error) {
    $("served").textContent = `Not ready: ${error.message}`;
    setTimeout(loadHeader, 2000);
  }
}

function facts(rows) {
  return el("dl", { class: "facts" }, ...rows.flatMap(([term, value]) => [el("dt", { text: term }), el("dd", { text: value })]));
}

function recipe(training) {
  const t = training ?? {};
  const parts = [
    t.recipe && `${t.recipe} recipe`,
    t.hidden_units && `Dense ${t.hidden_units.join("→")} (${t.activation})`,
    t.teacher_epochs > 0 &&
      `taught by a CNN (${t.teacher_epochs} epochs, ${percent(t.teacher_validation_accuracy, 2)} validation accuracy; ` +
        `T = ${t.distill_temperature}, soft share ${t.distill_weight})`,
    t.ema_momentum > 0 && `weight averaging ${t.ema_momentum}`,
    t.dropout_rate != null && `dropout ${t.dropout_rate}`,
    t.optimizer && `${t.optimizer}, lr ${t.learning_rate} (${t.lr_schedule})`,
    t.batch_size && `batch ${t.batch_size}`,
    t.label_smoothing != null && `label smoothing ${t.label_smoothing}`,
    t.augment_flip != null && (t.augment_flip ? "flip augmentation" : "no flips"),
    t.augment_shift > 0 && `shifts of ±${t.augment_shift} px`,
    t.train_samples && `${t.train_samples.toLocaleString()} training images`,
  ];
  return parts.filter(Boolean).join(", ");
}

async function showModel(name) {
  const target = $("model-info");
  if (!name) return;
  target.replaceChildren(el("p", { text: "Loading…" }));
  try {
    const path = `/models/${encodeURIComponent(name)}`;
    const [meta, table] = await Promise.all([getJSON(path), getJSON(`${path}/versions`)]);
    const calibration = meta.calibration;
    const rows = [
      ["Model", `${meta.name}, version ${meta.version} (${meta.engine})`],
      ["Trained", `${meta.created_at.replace("T", " ").slice(0, 19)} UTC, ${meta.epochs_run} epochs (best ${meta.best_epoch}), ${Math.round(meta.training_seconds)} s`],
      ["Recipe", recipe(meta.training)],
      ["Validation accuracy", meta.validation ? percent(meta.validation.accuracy, 2) : "–"],
      ["Test accuracy", meta.test ? percent(meta.test.accuracy, 2) : "–"],
      ["Calibration", calibration
        ? `temperature ${fixed(calibration.temperature, 3)}; test ECE ${fixed(calibration.before.test?.ece)} → ${fixed(calibration.after.test?.ece)}`
        : "not calibrated"],
      ["Out-of-distribution flag", meta.ood ? `on (${percent(meta.ood.flagged?.test ?? 0)} of the test set flagged)` : "none for this version"],
    ];
    const figure = (file, alt) => el("img", { src: `${path}/versions/${meta.version}/figures/${file}`, alt, loading: "lazy" });
    const figures = [figure("learning_curves.png", "Learning curves: loss and accuracy per epoch, training and validation")];
    if (calibration) figures.push(figure("reliability.png", "Reliability diagram: confidence against accuracy, before and after calibration"));
    for (const img of figures) img.addEventListener("error", () => img.replaceWith(el("p", { class: "hint", text: `${img.alt}: not available` })));
    target.replaceChildren(
      el("h2", { text: "This version" }), facts(rows),
      el("div", { class: "figures" }, ...figures),
      el("h2", { text: "Versions in the store" }), versionTable(table));
  } catch (error) {
    target.replaceChildren(el("p", { class: "note error", role: "alert", text: error.message }));
  }
}

function versionTable(table) {
  const head = el("tr", {}, ...["Version", "Created", "Validation", "Test", "State"].map((h) => el("th", { scope: "col", text: h })));
  const rows = table.versions.map((v) => el("tr", { class: v.served ? "current" : "" },
    el("th", { scope: "row", text: String(v.version) }),
    el("td", { text: v.created_at ? v.created_at.slice(0, 10) : "–" }),
    el("td", { text: v.validation_accuracy != null ? percent(v.validation_accuracy, 2) : "–" }),
    el("td", { text: v.test_accuracy != null ? percent(v.test_accuracy, 2) : "–" }),
    el("td", { text: [v.served && "served", v.promoted && "promoted", v.error && "unreadable"].filter(Boolean).join(", ") || "–" })));
  return el("div", { class: "scroll" }, el("table", { class: "versions" }, el("caption", { class: "visually-hidden", text: "Versions" }), el("thead", {}, head), el("tbody", {}, ...rows)));
}

// ---- evaluate ----

async function evaluate() {
  const button = $("evaluate");
  const target = $("evaluation");
  button.disabled = true;
  target.replaceChildren(el("p", { text: "Evaluating on the test set…" }));
  try {
    const result = await getJSON("/evaluate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ dataset: "test" }),
    });
    target.replaceChildren(...evaluation(result));
  } catch (error) {
    target.replaceChildren(el("p", { class: "note error", role: "alert", text: error.message }));
  } finally {
    button.disabled = false;
  }
}

function evaluation(result) {
  const names = result.class_names;
  const summary = facts([
    ["Images", result.count.toLocaleString()],
    ["Accuracy", percent(result.accuracy, 2)],
    ["Loss", fixed(result.loss)],
    ["Calibration error (ECE)", fixed(result.ece)],
    ["Flagged out-of-distribution", result.ood_flagged == null ? "no detector" : percent(result.ood_flagged)],
  ]);
  const perClass = el("table", {},
    el("caption", { text: "Per class" }),
    el("thead", {}, el("tr", {}, ...["Class", "Precision", "Recall", "F1", "Images"].map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, ...names.map((name) => {
      const m = result.per_class[name];
      return el("tr", {}, el("th", { scope: "row", text: name }), el("td", { text: fixed(m.precision, 3) }),
        el("td", { text: fixed(m.recall, 3) }), el("td", { text: fixed(m.f1, 3) }), el("td", { text: String(m.support) }));
    })));
  return [el("h2", { text: `Version ${result.model.version} on the test set` }), summary,
    el("div", { class: "scroll" }, perClass), el("div", { class: "scroll" }, confusion(names, result.confusion_matrix))];
}

function confusion(names, matrix) {
  const short = (name) => name.split("/")[0];
  const table = el("table", { class: "confusion", id: "confusion" },
    el("caption", { text: "Confusion matrix: rows are the true class, columns the predicted one" }),
    el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "true \\ predicted" }), ...names.map((n) => el("th", { scope: "col", text: short(n) })))));
  const body = el("tbody");
  matrix.forEach((row, i) => {
    const total = row.reduce((a, b) => a + b, 0) || 1;
    body.append(el("tr", {}, el("th", { scope: "row", text: names[i] }), ...row.map((count) => {
      const cell = el("td", { text: String(count) });
      const share = count / total;
      cell.style.background = `rgb(10 88 202 / ${(0.9 * share).toFixed(3)})`;
      if (share > 0.5) cell.style.color = "#fff";
      return cell;
    })));
  });
  table.append(body);
  return table;
}

// ---- live ----

function startLive() {
  if (state.liveTimer) return;
  readLive();
  state.liveTimer = setInterval(readLive, 2000);
}

function stopLive() {
  clearInterval(state.liveTimer);
  state.liveTimer = null;
}

async function readLive() {
  try {
    const reading = await getJSON("/stats");
    state.live.push(reading);
    if (state.live.length > LIVE_POINTS + 1) state.live.shift();
    drawLive();
  } catch (error) {
    $("live-rate").textContent = error.message;
  }
}

function quantile(buckets, q) {
  const total = buckets.at(-1)?.[1] ?? 0;
  if (!total) return null;
  let previous = [0, 0];
  for (const [le, count] of buckets) {
    if (count >= q * total) {
      const width = count - previous[1];
      return previous[0] + (le - previous[0]) * (width ? (q * total - previous[1]) / width : 1);
    }
    previous = [le, count];
  }
  return previous[0];
}

function drawLive() {
  const points = [];
  for (let i = 1; i < state.live.length; i++) {
    const [a, b] = [state.live[i - 1], state.live[i]];
    const seconds = b.time - a.time;
    const count = b.latency.count - a.latency.count;
    const buckets = b.latency.buckets.map(([le, n], k) => [le, n - a.latency.buckets[k][1]]);
    points.push({
      rate: Math.max(0, (b.requests - a.requests) / seconds),
      mean: count > 0 ? 1000 * (b.latency.sum - a.latency.sum) / count : null,
      p90: count > 0 ? 1000 * quantile(buckets, 0.9) : null,
    });
  }
  const last = points.at(-1);
  if (last) {
    $("live-rate").textContent = `${last.rate.toFixed(1)} /s`;
    $("live-latency").textContent = last.mean == null ? "no requests" : `${last.mean.toFixed(1)} ms, ${last.p90.toFixed(1)} ms`;
  }
  const style = getComputedStyle(document.documentElement);
  const colors = [style.getPropertyValue("--accent").trim(), style.getPropertyValue("--warn-fg").trim()];
  chart($("chart-rate"), [points.map((p) => p.rate)], colors, style);
  chart($("chart-latency"), [points.map((p) => p.mean), points.map((p) => p.p90)], colors, style);
  classMix();
}

function chart(canvas, series, colors, style) {
  const pen = canvas.getContext("2d");
  const { width, height } = canvas;
  pen.clearRect(0, 0, width, height);
  const top = Math.max(1e-9, ...series.flat().filter((v) => v != null));
  pen.strokeStyle = style.getPropertyValue("--line").trim();
  pen.strokeRect(0.5, 0.5, width - 1, height - 1);
  pen.fillStyle = style.getPropertyValue("--muted").trim();
  pen.font = "12px system-ui, sans-serif";
  pen.fillText(top.toPrecision(3), 4, 14);
  series.forEach((values, s) => {
    pen.strokeStyle = colors[s];
    pen.lineWidth = 2;
    pen.beginPath();
    values.forEach((v, i) => {
      if (v == null) return;
      const x = width - (values.length - 1 - i) * (width / LIVE_POINTS);
      const y = height - 4 - (v / top) * (height - 24);
      if (i === 0 || values[i - 1] == null) pen.moveTo(x, y); else pen.lineTo(x, y);
    });
    pen.stroke();
  });
}

function classMix() {
  const model = state.defaultModel;
  const now = state.live.at(-1);
  const before = state.live[Math.max(0, state.live.length - 31)]; // 30 readings: one minute
  if (!now || !model) return;
  const counts = state.classNames.map((name) => (now.predictions[model]?.[name] ?? 0) - (before.predictions[model]?.[name] ?? 0));
  const total = counts.reduce((a, b) => a + b, 0);
  $("live-classes").replaceWith(Object.assign(bars(state.classNames, counts.map((c) => (total ? c / total : 0))), { id: "live-classes" }));
}

// ---- start ----

document.addEventListener("DOMContentLoaded", () => {
  setUpTabs();
  setUpInputs();
  setUpDrawing();
  $("evaluate").addEventListener("click", evaluate);
  $("model-select").addEventListener("change", (event) => showModel(event.target.value));
  $("key-button").addEventListener("click", async () => {
    const key = await askKey("Enter the API key of this service.");
    if (key) sessionStorage.setItem(KEY, key);
  });
  loadHeader();
});
