// The search page: pick or drop an image, type a question, POST multipart to /search, show the hits.
// Plain browser JavaScript (no build step, nothing loaded from the network); text goes in via textContent only.
"use strict";

const $ = (id) => document.getElementById(id);
let chosen = null;  // the File to upload (from the picker or a drop)

function showImage(file) {
  chosen = file;
  const preview = $("preview");
  if (!file) {
    preview.hidden = true;
    preview.removeAttribute("src");
    $("drop-text").textContent = "Drop an image here, or click to choose one";
    $("image").value = "";
    return;
  }
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("drop-text").textContent = file.name;
}

function setStatus(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.className = isError ? "error" : "muted";
}

function cell(row, className, content) {
  const td = document.createElement("td");
  td.className = className;
  if (content instanceof Node) td.appendChild(content); else td.textContent = content;
  row.appendChild(td);
  return td;
}

function render(hits) {
  const rows = $("rows");
  rows.replaceChildren();
  for (const hit of hits) {
    const tr = document.createElement("tr");
    tr.className = "hit";
    tr.dataset.id = hit.id;
    cell(tr, "rank", String(hit.rank));
    cell(tr, "score", hit.score.toFixed(4));
    const thumb = cell(tr, "thumb", "");
    if (hit.thumbnail) {
      const img = document.createElement("img");
      img.src = hit.thumbnail;
      img.alt = hit.title;
      img.loading = "lazy";
      thumb.appendChild(img);
    }
    const entry = document.createElement("div");
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = hit.title || hit.id;
    const id = document.createElement("span");
    id.className = "id";
    id.textContent = hit.id;
    const snippet = document.createElement("div");
    snippet.className = "snippet";
    snippet.textContent = hit.snippet;
    entry.append(title, id, snippet);
    cell(tr, "entry", entry);
    rows.appendChild(tr);
  }
  $("results").hidden = hits.length === 0;
}

async function search(event) {
  event.preventDefault();
  const body = new FormData();
  const question = $("question").value.trim();
  if (question) body.append("question", question);
  if (chosen) body.append("image", chosen, chosen.name);
  body.append("k", $("k").value || "10");
  $("submit").disabled = true;
  setStatus("searching…", false);
  const started = performance.now();
  try {
    const response = await fetch("/search", { method: "POST", body });
    const data = await response.json();
    if (!response.ok) {
      render([]);
      setStatus(data.error || `error ${response.status}`, true);
      return;
    }
    render(data.hits);
    const ms = Math.round(performance.now() - started);
    setStatus(`${data.hits.length} results in ${ms} ms`, false);
  } catch (err) {
    setStatus(`request failed: ${err}`, true);
  } finally {
    $("submit").disabled = false;
  }
}

async function loadHealth() {
  try {
    const h = await (await fetch("/health")).json();
    const enc = h.encoder || {};
    $("health").textContent = `${h.index.size.toLocaleString()} KB vectors (dim ${h.index.dim}, ${h.index.factory})` +
      ` · encoder ${enc.encoder} (${enc.kind}) · backbone ${String(enc.backbone).split("/").pop()}`;
    $("k").max = h.limits.max_k;
    $("question").maxLength = h.limits.max_question_chars;
  } catch (err) {
    $("health").textContent = `server unreachable: ${err}`;
  }
}

function setUp() {
  const drop = $("drop");
  $("image").addEventListener("change", (e) => showImage(e.target.files[0] || null));
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => {
    const file = e.dataTransfer.files[0];
    if (file) showImage(file);
  });
  $("clear").addEventListener("click", () => showImage(null));
  $("search-form").addEventListener("submit", search);
  loadHealth();
}

document.addEventListener("DOMContentLoaded", setUp);
