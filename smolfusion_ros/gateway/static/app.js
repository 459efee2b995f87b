// smolfusion web console: plain JavaScript against the gateway's HTTP API (no build, no CDN).
"use strict";

const $ = (id) => document.getElementById(id);
let streamAbort = null;

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  const response = await fetch(path, opts);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) throw new Error((body && body.error) || response.statusText);
  return body;
}

function currentSession() { return $("session-select").value || "default"; }
function currentPersona() { return $("persona-select").value || ""; }

function addTurn(role, text, meta) {
  const div = document.createElement("div");
  div.className = "turn " + role;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  div.appendChild(body);
  if (meta) {
    const m = document.createElement("div");
    m.className = "meta";
    m.textContent = meta;
    div.appendChild(m);
  }
  $("history").appendChild(div);
  $("history").scrollTop = $("history").scrollHeight;
  return div;
}

async function loadSessions(select) {
  try {
    const data = await api("/sessions");
    const sel = $("session-select");
    const keep = select || sel.value || "default";
    const ids = data.sessions.map((s) => s.session_id);
    if (!ids.includes(keep)) ids.unshift(keep);
    sel.innerHTML = "";
    for (const id of ids) {
      const o = document.createElement("option");
      o.value = o.textContent = id;
      sel.appendChild(o);
    }
    sel.value = keep;
  } catch (e) { $("timings").textContent = "sessions: " + e.message; }
}

async function loadHistory() {
  $("history").innerHTML = "";
  try {
    const data = await api("/sessions/" + encodeURIComponent(currentSession()));
    if (data.summary) addTurn("system", "Summary: " + data.summary);
    for (const t of data.turns) addTurn(t.role, t.text, t.source + (t.persona ? " · " + t.persona : ""));
  } catch (e) { /* a new session has no history yet (404) */ }
}

async function loadPersonas() {
  try {
    const data = await api("/personas");
    const sel = $("persona-select");
    sel.innerHTML = "";
    const def = document.createElement("option");
    def.value = ""; def.textContent = "(session's / default: " + data.default_id + ")";
    sel.appendChild(def);
    for (const p of data.personas) {
      const o = document.createElement("option");
      o.value = p.persona_id;
      o.textContent = p.name + " (" + p.persona_id + ", " + p.source + ")";
      sel.appendChild(o);
    }
  } catch (e) { $("knowledge-status").textContent = "personas: " + e.message; }
}

function parseEvents(buffer, onEvent) {
  // Server-sent events: blocks separated by a blank line, "event:" and "data:" lines.
  let index;
  while ((index = buffer.indexOf("\n\n")) >= 0) {
    const block = buffer.slice(0, index);
    buffer = buffer.slice(index + 2);
    let event = "message", data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data += line.slice(5).trim();
    }
    onEvent(event, data ? JSON.parse(data) : null);
  }
  return buffer;
}

async function sendChat(text) {
  addTurn("user", text);
  const reply = addTurn("assistant", "");
  reply.classList.add("streaming");
  const textSpan = reply.querySelector(".text");
  $("chat-send").disabled = true;
  $("chat-stop").disabled = false;
  streamAbort = new AbortController();
  const started = performance.now();
  let firstToken = null, batches = 0;
  try {
    const response = await fetch("/chat/stream", {
      method: "POST",
      headers: headers({"Content-Type": "application/json"}),
      body: JSON.stringify({session_id: currentSession(), text: text, persona: currentPersona(),
                            max_tokens: 256}),
      signal: streamAbort.signal,
    });
    if (!response.ok) {
      let msg = response.statusText;
      try { msg = (await response.json()).error; } catch (e) { /* not JSON */ }
      throw new Error(msg);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer = parseEvents(buffer + decoder.decode(value, {stream: true}), (event, data) => {
        if (event === "token") {
          if (firstToken === null) firstToken = performance.now() - started;
          batches += 1;
          textSpan.textContent += data.delta;
          reply.dataset.batches = String(batches);
          $("history").scrollTop = $("history").scrollHeight;
        } else if (event === "final" || event === "error") {
          textSpan.textContent = data.reply || textSpan.textContent;
          reply.classList.remove("streaming");
          reply.classList.add(event === "final" ? "final" : "failed");
          const meta = document.createElement("div");
          meta.className = "meta";
          meta.textContent = event === "error" ? "error: " + data.error :
            `${data.source} · first token ${data.ttft_s.toFixed(2)} s · total ${data.latency_s.toFixed(2)} s · ` +
            `${data.tokens} tokens` + (data.knowledge_ids.length ? " · knowledge: " + data.knowledge_ids.join(", ") : "") +
            (data.scene_text ? " · scene: " + data.scene_text : "");
          reply.appendChild(meta);
          $("timings").textContent = `first token at the browser ${(firstToken || 0).toFixed(0)} ms, ` +
            `${batches} batches, total ${(performance.now() - started).toFixed(0)} ms`;
        }
      });
    }
  } catch (e) {
    reply.classList.remove("streaming");
    reply.classList.add("failed");
    if (e.name !== "AbortError") addTurn("system error", "error: " + e.message);
  } finally {
    $("chat-send").disabled = false;
    $("chat-stop").disabled = true;
    streamAbort = null;
    loadSessions(currentSession());
  }
}

async function refreshScene() {
  try {
    const scene = await api("/scene");
    $("scene-text").textContent = scene.available ?
      `${scene.description} (${scene.model}, ${scene.age_s.toFixed(1)} s ago)` : "no scene yet (no camera frame)";
  } catch (e) { $("scene-text").textContent = "scene: " + e.message; }
  try {
    const response = await fetch("/scene/image?t=" + Date.now(), {headers: headers()});
    if (response.ok) {
      const blob = await response.blob();
      const old = $("scene-image").src;
      $("scene-image").src = URL.createObjectURL(blob);
      if (old.startsWith("blob:")) URL.revokeObjectURL(old);
    }
  } catch (e) { /* no debug image yet */ }
}

async function refreshHealth() {
  const badge = $("health");
  try {
    const response = await fetch("/health");
    const h = await response.json();
    badge.textContent = h.ready ? `ready · ${h.llm_model} · queue ${h.queue_depth}` : "not ready: " + h.fusion_state;
    badge.className = "badge " + (h.ready ? "ok" : "bad");
  } catch (e) { badge.textContent = "gateway unreachable"; badge.className = "badge bad"; }
}

async function loadKnowledge() {
  try {
    const data = await api("/knowledge?persona=" + encodeURIComponent(currentPersona()));
    const list = $("knowledge-list");
    list.innerHTML = "";
    for (const d of data.documents) {
      const li = document.createElement("li");
      li.textContent = `${d.name} (${d.kind}, ${d.chunks} chunks, ${d.words} words)`;
      list.appendChild(li);
    }
  } catch (e) { $("knowledge-status").textContent = "knowledge: " + e.message; }
}

$("chat-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("chat-input").value.trim();
  if (!text) return;
  $("chat-input").value = "";
  sendChat(text);
});
$("chat-stop").addEventListener("click", () => { if (streamAbort) streamAbort.abort(); });
$("session-select").addEventListener("change", loadHistory);
$("session-add").addEventListener("click", async () => {
  const id = $("session-new").value.trim();
  if (!id) return;
  await loadSessions(id);
  loadHistory();
});
$("session-delete").addEventListener("click", async () => {
  try { await api("/sessions/" + encodeURIComponent(currentSession()), {method: "DELETE"}); }
  catch (e) { $("timings").textContent = e.message; }
  await loadSessions("default");
  loadHistory();
});
$("persona-select").addEventListener("change", loadKnowledge);
$("analyze-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = new FormData();
  form.append("prompt", $("analyze-prompt").value);
  const file = $("analyze-file").files[0];
  if (file) form.append("image", file);
  $("analyze-answer").textContent = "analyzing…";
  $("analyze-answer").className = "";
  try {
    const r = await api("/analyze", {method: "POST", body: form});
    $("analyze-answer").textContent = `${r.answer} (${r.model}, ${r.latency_s.toFixed(2)} s, ${r.image})`;
    $("analyze-answer").className = "done";
  } catch (e) { $("analyze-answer").textContent = "error: " + e.message; $("analyze-answer").className = "error"; }
});
$("knowledge-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const file = $("knowledge-file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  form.append("persona", currentPersona());
  $("knowledge-status").textContent = "ingesting " + file.name + "…";
  // The upload answers only when the document is stored: meanwhile show knowledge_node's
  // progress (chunks embedded), ignoring messages older than this upload.
  const started = Date.now();
  let finished = false;
  const poll = setInterval(async () => {
    try {
      const p = await api("/knowledge/progress?name=" + encodeURIComponent(file.name));
      const elapsed = (Date.now() - started) / 1000;
      const current = p.ingests.find((i) => i.age_s <= elapsed);
      if (current && !finished) {
        $("knowledge-status").textContent =
          `ingesting ${file.name}: ${current.done}/${current.total} chunks embedded`;
      }
    } catch (e) { /* progress is a nicety; the upload's own answer reports errors */ }
  }, 500);
  try {
    const r = await api("/knowledge", {method: "POST", body: form});
    $("knowledge-status").textContent = `${r.name}: ${r.chunks} chunks in ${r.seconds} s`;
  } catch (e) { $("knowledge-status").textContent = "error: " + e.message; }
  finished = true;
  clearInterval(poll);
  loadKnowledge();
});
$("knowledge-clear").addEventListener("click", async () => {
  try {
    const r = await api("/knowledge?persona=" + encodeURIComponent(currentPersona()), {method: "DELETE"});
    $("knowledge-status").textContent = `${r.documents_deleted} documents deleted`;
  } catch (e) { $("knowledge-status").textContent = "error: " + e.message; }
  loadKnowledge();
});

loadSessions("default").then(loadHistory);
loadPersonas().then(loadKnowledge);
refreshHealth();
refreshScene();
setInterval(refreshScene, 2000);
setInterval(refreshHealth, 5000);
