// mi-llm web chat: streams replies from /v1/chat/completions (server-sent events) and keeps
// the conversation on the server under a session id stored in this browser.
"use strict";

const $ = (id) => document.getElementById(id);
const log = $("log"), form = $("form"), input = $("input"), send = $("send"), status = $("status");

function newSessionId() {
  if (window.crypto && crypto.randomUUID) return "web-" + crypto.randomUUID();
  const a = new Uint8Array(16);
  crypto.getRandomValues(a);
  return "web-" + Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

let sessionId = localStorage.getItem("mi-llm-session") || newSessionId();
localStorage.setItem("mi-llm-session", sessionId);
// Whether this session has been used: only then is there a history on the server to load.
let sessionUsed = localStorage.getItem("mi-llm-session-used") === sessionId;
let apiKey = sessionStorage.getItem("mi-llm-key") || "";
let busy = false;

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (apiKey) h["Authorization"] = "Bearer " + apiKey;
  return h;
}

function bubble(role, text, crisis, code) {
  const div = document.createElement("div");
  div.className = "msg " + role + (crisis ? " crisis" : "");
  div.dataset.role = role;
  div.textContent = text || "";  // text only: never interpreted as HTML
  if (code) showCode(div, code);
  log.appendChild(div);
  log.scrollTop = log.scrollHeight;
  return div;
}

// The MITI code a strategy-steered counselor chose for its reply (serve --strategy): shown as
// a badge drawn by CSS from the attribute, so it is never part of the reply's text.
function showCode(div, code) {
  div.dataset.code = code;
  div.title = "MITI code of this reply: " + code;
}

// The safety layer's verdict on the user's message: high risk is the safe response (crisis),
// low risk an answer with a check-in appended; both are marked, the level kept on the bubble.
function showSafety(div, safety) {
  if (!safety) return;
  const level = safety.level || (safety.crisis ? "high" : "none");
  if (level === "none") return;
  div.dataset.level = level;
  div.classList.add(level === "high" ? "crisis" : "checkin");
}

function needKey(message) {
  $("keybox").hidden = false;
  status.textContent = message || "This server needs an API key.";
}

async function loadSession() {
  if (!sessionUsed) return;
  const r = await fetch("/v1/sessions/" + encodeURIComponent(sessionId), { headers: headers() });
  if (r.status === 401) return needKey();
  if (!r.ok) return;  // 404: a new conversation
  const data = await r.json();
  log.textContent = "";
  for (const m of data.messages) bubble(m.role, m.content, Boolean(m.safety), m.code);
}

async function loadModel() {
  const r = await fetch("/v1/models", { headers: headers() });
  if (r.status === 401) return needKey();
  if (r.ok) {
    const data = await r.json();
    $("model").textContent = data.data.length ? data.data[0].id : "";
  }
}

// Parse a server-sent event stream: "data: {...}" lines separated by blank lines.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function sendMessage(text) {
  busy = true;
  send.disabled = true;
  status.textContent = "";
  bubble("user", text);
  const out = bubble("assistant", "");
  out.classList.add("streaming");
  const body = { messages: [{ role: "user", content: text }], stream: true, session_id: sessionId };
  if ($("language").value) body.language = $("language").value;
  sessionUsed = true;
  localStorage.setItem("mi-llm-session-used", sessionId);
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify(body),
    });
    if (!r.ok) {
      let msg = r.status + " " + r.statusText;
      try { msg = (await r.json()).error.message; } catch (e) { /* not JSON */ }
      if (r.status === 401) needKey(msg);
      out.remove();
      status.textContent = msg;
      return;
    }
    for await (const ev of events(r)) {
      if (ev.error) { status.textContent = ev.error.message; break; }
      if (ev.mi_llm && ev.mi_llm.safety) showSafety(out, ev.mi_llm.safety);
      if (ev.mi_llm && ev.mi_llm.code) showCode(out, ev.mi_llm.code);
      const choice = ev.choices && ev.choices[0];
      if (choice && choice.delta && choice.delta.content) {
        out.textContent += choice.delta.content;
        log.scrollTop = log.scrollHeight;
      }
    }
  } catch (e) {
    status.textContent = "Connection failed: " + e.message;
  } finally {
    out.classList.remove("streaming");
    busy = false;
    send.disabled = false;
    input.focus();
  }
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  const text = input.value.trim();
  if (!text || busy) return;
  input.value = "";
  sendMessage(text);
});

input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    form.requestSubmit();
  }
});

$("new").addEventListener("click", () => {
  sessionId = newSessionId();
  sessionUsed = false;
  localStorage.setItem("mi-llm-session", sessionId);
  log.textContent = "";
  status.textContent = "";
});

$("savekey").addEventListener("click", () => {
  apiKey = $("key").value.trim();
  sessionStorage.setItem("mi-llm-key", apiKey);
  $("keybox").hidden = true;
  status.textContent = "";
  loadModel();
  loadSession();
});

loadModel();
loadSession();
