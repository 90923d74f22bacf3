// Single-page chat for the minicpmv OpenAI-compatible server. No build step, no dependencies.
// The conversation lives in `history` (OpenAI message format) and is sent whole on every turn;
// the server's vision cache keeps re-sent images cheap.
"use strict";

const $ = (id) => document.getElementById(id);
const history = [];
let pending = [];          // attachments of the next message: {kind: "image"|"video", url, name}
let controller = null;     // AbortController of the running request
let modelId = "minicpmv";

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function loadModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
    modelId = body.data[0].id;
    $("model").textContent = modelId;
  } catch (e) {
    $("model").textContent = "model unavailable: " + e.message;
  }
}

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function attach(files) {
  for (const file of files) {
    const kind = file.type.startsWith("video/") ? "video" : file.type.startsWith("image/") ? "image" : null;
    if (!kind) continue;
    pending.push({ kind, url: await readAsDataURL(file), name: file.name || kind });
  }
  renderAttachments();
}

function mediaElement(item) {
  const el = document.createElement(item.kind === "video" ? "video" : "img");
  el.src = item.url;
  el.title = item.name;
  if (item.kind === "video") el.controls = true;
  return el;
}

function renderAttachments() {
  const box = $("attachments");
  box.replaceChildren();
  pending.forEach((item, i) => {
    const wrap = document.createElement("div");
    wrap.className = "item";
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.title = "Remove";
    remove.onclick = () => { pending.splice(i, 1); renderAttachments(); };
    wrap.append(mediaElement(item), remove);
    box.append(wrap);
  });
}

function addMessage(role) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  $("log").append(div);
  return div;
}

function scrollDown() { $("log").scrollTop = $("log").scrollHeight; }

function userTurn(text) {
  const div = addMessage("user");
  pending.forEach((item) => div.append(mediaElement(item)));
  if (text) div.append(document.createTextNode(text));
  const parts = pending.map((item) => item.kind === "video"
    ? { type: "video_url", video_url: { url: item.url } }
    : { type: "image_url", image_url: { url: item.url } });
  if (text) parts.push({ type: "text", text });
  history.push({ role: "user", content: parts });
  pending = [];
  renderAttachments();
}

function assistantView() {
  const div = addMessage("assistant");
  const details = document.createElement("details");
  details.className = "reasoning";
  details.hidden = true;
  const summary = document.createElement("summary");
  summary.textContent = "Thinking…";
  const reasoning = document.createElement("div");
  details.append(summary, reasoning);
  const answer = document.createElement("div");
  answer.className = "answer";
  const stats = document.createElement("div");
  stats.className = "stats";
  div.append(details, answer, stats);
  return { details, summary, reasoning, answer, stats };
}

// Parse an SSE byte stream into JSON events; calls onEvent(obj) for every `data:` line except [DONE].
async function readSSE(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, cut).trim();
      buffer = buffer.slice(cut + 2);
      if (line.startsWith("data: ") && line !== "data: [DONE]") onEvent(JSON.parse(line.slice(6)));
    }
  }
}

function requestBody() {
  const body = {
    model: modelId, messages: history, stream: true, stream_options: { include_usage: true },
    max_tokens: parseInt($("max-tokens").value, 10) || 1024,
    chat_template_kwargs: { enable_thinking: $("thinking").checked },
  };
  const t = $("temperature").value;
  if (t !== "") body.temperature = parseFloat(t);
  return body;
}

function showStats(view, t0, tFirst, usage) {
  const total = (performance.now() - t0) / 1000;
  const parts = [];
  if (usage) {
    parts.push(`${usage.prompt_tokens} prompt tokens (${usage.prompt_tokens_details.visual_tokens} visual)`);
    parts.push(`${usage.completion_tokens} completion tokens`);
  }
  if (tFirst !== null) parts.push(`first token ${((tFirst - t0) / 1000).toFixed(2)} s`);
  parts.push(`total ${total.toFixed(2)} s`);
  if (usage && total > 0) parts.push(`${(usage.completion_tokens / total).toFixed(1)} tok/s`);
  view.stats.textContent = parts.join(" · ");
}

async function send(event) {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if ((!text && pending.length === 0) || controller) return;
  $("prompt").value = "";
  userTurn(text);
  const view = assistantView();
  const t0 = performance.now();
  let tFirst = null, usage = null, answer = "";
  setBusy(true);
  controller = new AbortController();
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(requestBody()), signal: controller.signal,
    });
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      throw new Error(body.error ? body.error.message : `HTTP ${r.status}`);
    }
    await readSSE(r, (obj) => {
      if (obj.error) throw new Error(obj.error.message);
      if (obj.usage) usage = obj.usage;
      for (const choice of obj.choices || []) {
        const d = choice.delta || {};
        if ((d.reasoning_content || d.content) && tFirst === null) tFirst = performance.now();
        if (d.reasoning_content) {
          view.details.hidden = false;
          view.reasoning.textContent += d.reasoning_content;
        }
        if (d.content) { answer += d.content; view.answer.textContent = answer; }
      }
      showStats(view, t0, tFirst, usage);
      scrollDown();
    });
    view.summary.textContent = "Reasoning (click to expand)";
    history.push({ role: "assistant", content: answer });
  } catch (e) {
    const err = document.createElement("div");
    err.className = "error";
    err.textContent = e.name === "AbortError" ? "stopped" : "Error: " + e.message;
    view.answer.after(err);
    history.push({ role: "assistant", content: answer });
  } finally {
    showStats(view, t0, tFirst, usage);
    controller = null;
    setBusy(false);
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").hidden = !busy;
  $("status").textContent = busy ? "generating…" : "";
}

$("composer").addEventListener("submit", send);
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
});
$("prompt").addEventListener("paste", (e) => {
  const files = [...e.clipboardData.items].filter((i) => i.kind === "file").map((i) => i.getAsFile());
  if (files.length) { e.preventDefault(); attach(files); }
});
$("image-input").addEventListener("change", (e) => { attach(e.target.files); e.target.value = ""; });
$("video-input").addEventListener("change", (e) => { attach(e.target.files); e.target.value = ""; });
$("stop").addEventListener("click", () => controller && controller.abort());
$("reset").addEventListener("click", () => {
  history.length = 0; pending = []; renderAttachments(); $("log").replaceChildren();
});
$("api-key").value = localStorage.getItem("minicpmv-api-key") || "";
$("api-key").addEventListener("change", () => { localStorage.setItem("minicpmv-api-key", $("api-key").value); loadModel(); });
loadModel();
