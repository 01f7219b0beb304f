// MITI 4.2.1 coding page: every change is autosaved to the local server (SQLite).
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};

let META = null;          // /api/meta
let S = null;             // the current session's view
let cur = { t: null, u: 0 };   // active utterance: turn index, utterance index
let mode = "codes";       // "codes" | "globals" | "split"
let gcur = 0;             // active global rating row
let caret = 1;            // split position (token boundary) in split mode
let rev = 0, savedRev = 0, saveTimer = null, inflight = null;

// ---------------------------------------------------------------- server
async function api(method, url, body, keepalive) {
  const opts = { method, headers: {}, keepalive: !!keepalive };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(url, opts);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const d = data.detail;
    throw new Error(typeof d === "string" ? d : JSON.stringify(d || r.status));
  }
  return data;
}

function payload() {
  const turns = {};
  for (const t of S.turns) if (t.role === "counselor") turns[String(t.index)] = t.utterances;
  return { turns, globals: S.globals, done: S.done };
}

function setStatus(state, text) {
  const s = $("#save-status");
  s.dataset.state = state;
  s.textContent = text;
}

function changed() {
  rev += 1;
  setStatus("dirty", "unsaved changes");
  clearTimeout(saveTimer);
  saveTimer = setTimeout(saveNow, 350);
}

async function saveNow(keepalive) {
  clearTimeout(saveTimer);
  if (!S || rev === savedRev) return;
  if (inflight) { await inflight.catch(() => {}); if (rev === savedRev) return; }
  const sending = rev, index = S.index;
  setStatus("saving", "saving…");
  inflight = api("PUT", `/api/sessions/${index}`, payload(), keepalive);
  try {
    const prog = await inflight;
    savedRev = Math.max(savedRev, sending);
    updateListItem(prog);
    if (rev === savedRev) setStatus("saved", "saved " + new Date().toLocaleTimeString());
  } catch (e) {
    setStatus("error", "not saved: " + e.message);
    saveTimer = setTimeout(saveNow, 5000);
  } finally {
    inflight = null;
  }
}

// ---------------------------------------------------------------- loading
async function loadMeta() {
  META = await api("GET", "/api/meta");
  $("#coder").textContent = "coder: " + META.coder + " · " + META.sessions_file;
  const legend = $("#code-legend");
  legend.replaceChildren();
  for (const c of META.codes) {
    const li = el("li");
    li.append(el("kbd", "", c.shortcut), el("span", "badge c-" + c.key, c.key), el("span", "", c.name));
    legend.append(li);
  }
  const li = el("li");
  li.append(el("kbd", "", "x"), el("span", "badge", "–"), el("span", "", "not coded (null)"));
  legend.append(li);
  renderList();
}

async function openSession(index) {
  if (S) await saveNow();
  S = await api("GET", `/api/sessions/${index}`);
  rev = savedRev = 0;
  const first = S.turns.find((t) => t.role === "counselor");
  cur = { t: first ? first.index : null, u: 0 };
  mode = "codes";
  history.replaceState(null, "", "#s=" + index);
  setStatus("saved", S.saved_at ? "saved " + new Date(S.saved_at).toLocaleTimeString() : "nothing saved yet");
  render();
}

// ---------------------------------------------------------------- rendering
function progText(p) {
  return `${p.coded}/${p.utterances} coded · globals ${p.rated}/4`;
}

function renderList() {
  const list = $("#session-list");
  list.replaceChildren();
  for (const p of META.sessions) {
    const li = el("li");
    li.dataset.index = p.index;
    li.append(el("span", "sid", p.id), el("span", "prog", (p.topic ? p.topic + " · " : "") + progText(p)));
    li.addEventListener("click", () => openSession(p.index));
    list.append(li);
  }
  markList();
}

function markList() {
  for (const li of document.querySelectorAll("#session-list li")) {
    const p = META.sessions[+li.dataset.index];
    li.classList.toggle("current", !!S && S.index === p.index);
    li.classList.toggle("done", !!p.done);
  }
}

function updateListItem(prog) {
  META.sessions[prog.index] = prog;
  const li = document.querySelector(`#session-list li[data-index="${prog.index}"]`);
  if (li) li.querySelector(".prog").textContent = (prog.topic ? prog.topic + " · " : "") + progText(prog);
  markList();
}

function tokens(text) {
  // Split points: between words (en) or characters (zh).
  if (S.language === "zh") return Array.from(text);
  return text.match(/\S+\s*/g) || [text];
}

function render() {
  $("#session-pos").textContent = `session ${S.index + 1} of ${META.sessions.length}`;
  $("#session-title").textContent = S.id + (S.topic ? " · " + S.topic : "");
  $("#session-target").textContent = S.target_behaviour ? "Target behaviour: " + S.target_behaviour : "";
  const w = $("#session-warning");
  w.hidden = !S.warning;
  w.textContent = S.warning || "";
  $("#done-box").checked = !!S.done;
  renderTranscript();
  renderGlobals();
  markList();
}

function renderTranscript() {
  const box = $("#transcript");
  box.replaceChildren();
  for (const t of S.turns) {
    const div = el("div", "turn " + t.role);
    div.append(el("div", "role", t.role));
    if (t.role === "client") {
      div.append(el("div", "text", t.text));
    } else {
      t.utterances.forEach((u, ui) => div.append(renderUtterance(t, u, ui)));
    }
    box.append(div);
  }
  const active = box.querySelector(".utt.active");
  if (active) active.scrollIntoView({ block: "nearest" });
}

function renderUtterance(t, u, ui) {
  const row = el("div", "utt");
  row.dataset.t = t.index;
  row.dataset.u = ui;
  const isActive = cur.t === t.index && cur.u === ui;
  if (isActive) row.classList.add("active");
  if (isActive && mode === "split") row.classList.add("splitting");
  const badge = el("span", "badge" + (u.code ? " coded c-" + u.code : ""), u.code || "–");
  badge.title = u.code ? META.codes.find((c) => c.key === u.code).name : "not coded";
  const text = el("span", "utt-text");
  const toks = tokens(u.text);
  toks.forEach((tok, k) => {
    if (k > 0) {
      const gap = el("span", "gap");
      gap.dataset.k = k;
      gap.title = "split here";
      if (isActive && mode === "split" && caret === k) gap.classList.add("caret");
      gap.addEventListener("click", (ev) => { ev.stopPropagation(); split(t.index, ui, k); });
      text.append(gap);
    }
    text.append(el("span", "tok", tok));
  });
  row.append(badge, text);
  if (ui < t.utterances.length - 1) {
    const m = el("button", "merge", "merge ↓");
    m.type = "button";
    m.title = "merge with the next utterance (m)";
    m.addEventListener("click", (ev) => { ev.stopPropagation(); cur = { t: t.index, u: ui }; merge(); });
    row.append(m);
  }
  row.addEventListener("click", () => { cur = { t: t.index, u: ui }; mode = "codes"; renderTranscript(); renderGlobals(); });
  return row;
}

function renderGlobals() {
  const box = $("#globals");
  box.replaceChildren();
  $("#globals-panel").classList.toggle("mode", mode === "globals");
  META.globals.forEach((g, gi) => {
    const row = el("div", "grow" + (mode === "globals" && gi === gcur ? " active" : ""));
    row.dataset.key = g.key;
    row.append(el("span", "gname", g.name));
    for (let v = 1; v <= 5; v++) {
      const b = el("button", S.globals[g.key] === v ? "selected" : "", String(v));
      b.type = "button";
      b.dataset.value = v;
      b.addEventListener("click", () => rate(g.key, v));
      row.append(b);
    }
    box.append(row);
  });
}

// ---------------------------------------------------------------- editing
function turnByIndex(ti) { return S.turns.find((t) => t.index === ti); }

function positions() {
  const out = [];
  for (const t of S.turns) if (t.role === "counselor") t.utterances.forEach((_, ui) => out.push({ t: t.index, u: ui }));
  return out;
}

function move(delta) {
  const pos = positions();
  let i = pos.findIndex((p) => p.t === cur.t && p.u === cur.u);
  i = Math.max(0, Math.min(pos.length - 1, i + delta));
  cur = pos[i];
  renderTranscript();
}

function setCode(code) {
  const t = turnByIndex(cur.t);
  if (!t) return;
  t.utterances[cur.u].code = code;
  changed();
  move(1);
}

function split(ti, ui, k) {
  const t = turnByIndex(ti);
  const u = t.utterances[ui];
  const toks = tokens(u.text);
  if (k <= 0 || k >= toks.length) return;
  const a = toks.slice(0, k).join("").trim(), b = toks.slice(k).join("").trim();
  if (!a || !b) return;
  t.utterances.splice(ui, 1, { text: a, code: u.code }, { text: b, code: null });
  cur = { t: ti, u: ui };
  mode = "codes";
  changed();
  renderTranscript();
}

function merge() {
  const t = turnByIndex(cur.t);
  if (!t || cur.u >= t.utterances.length - 1) return;
  const a = t.utterances[cur.u], b = t.utterances[cur.u + 1];
  const sep = S.language === "zh" ? "" : " ";
  t.utterances.splice(cur.u, 2, { text: a.text + sep + b.text, code: a.code || b.code });
  changed();
  renderTranscript();
}

function rate(key, value) {
  S.globals[key] = value;
  changed();
  renderGlobals();
}

function setDone(done) {
  S.done = done;
  $("#done-box").checked = done;
  changed();
}

// ---------------------------------------------------------------- keyboard
function onKey(ev) {
  if (!S || ev.target.tagName === "INPUT" && ev.target.type === "text") return;
  if ((ev.ctrlKey || ev.metaKey) && ev.key.toLowerCase() === "s") { ev.preventDefault(); saveNow(); return; }
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const k = ev.key;
  if (mode === "split") {
    const t = turnByIndex(cur.t), n = tokens(t.utterances[cur.u].text).length;
    if (k === "ArrowRight" || k === "l") caret = Math.min(n - 1, caret + 1);
    else if (k === "ArrowLeft" || k === "h") caret = Math.max(1, caret - 1);
    else if (k === "Enter") { split(cur.t, cur.u, caret); return; }
    else if (k === "Escape" || k === "s") mode = "codes";
    else return;
    ev.preventDefault();
    renderTranscript();
    return;
  }
  if (mode === "globals") {
    if (k >= "1" && k <= "5") { rate(META.globals[gcur].key, +k); gcur = Math.min(META.globals.length - 1, gcur + 1); }
    else if (k === "ArrowDown" || k === "j") gcur = Math.min(META.globals.length - 1, gcur + 1);
    else if (k === "ArrowUp" || k === "k") gcur = Math.max(0, gcur - 1);
    else if (k === "x" || k === "Backspace") { S.globals[META.globals[gcur].key] = null; changed(); }
    else if (k === "Escape" || k === "g") mode = "codes";
    else return;
    ev.preventDefault();
    renderGlobals();
    return;
  }
  const code = META.codes.find((c) => c.shortcut === k);
  if (code) setCode(code.key);
  else if (k === "x" || k === "Backspace" || k === "Delete") setCode(null);
  else if (k === "ArrowDown" || k === "j") move(1);
  else if (k === "ArrowUp" || k === "k") move(-1);
  else if (k === "m") merge();
  else if (k === "s") {
    const t = turnByIndex(cur.t);
    if (!t || tokens(t.utterances[cur.u].text).length < 2) return;
    mode = "split";
    caret = Math.max(1, Math.floor(tokens(t.utterances[cur.u].text).length / 2));
    renderTranscript();
  }
  else if (k === "g") { mode = "globals"; gcur = 0; renderGlobals(); }
  else if (k === "d") setDone(!S.done);
  else if (k === "[") go(-1);
  else if (k === "]") go(1);
  else return;
  ev.preventDefault();
}

function go(delta) {
  const i = S.index + delta;
  if (i >= 0 && i < META.sessions.length) openSession(i);
}

async function exportFile() {
  await saveNow();
  const box = $("#export-status");
  box.textContent = "exporting…";
  try {
    const r = await api("POST", "/api/export", {});  // a JSON body: the server takes no other writes
    box.textContent = `exported ${r.sessions} session(s) (${r.done} done, ${r.without_globals} without all 4 globals) to ${r.path}`;
    box.dataset.state = "done";
  } catch (e) {
    box.textContent = "export failed: " + e.message;
    box.dataset.state = "error";
  }
}

// ---------------------------------------------------------------- start
document.addEventListener("keydown", onKey);
$("#save-btn").addEventListener("click", () => saveNow());
$("#export-btn").addEventListener("click", exportFile);
$("#prev-btn").addEventListener("click", () => go(-1));
$("#next-btn").addEventListener("click", () => go(1));
$("#done-box").addEventListener("change", (ev) => setDone(ev.target.checked));
window.addEventListener("pagehide", () => { if (S && rev !== savedRev) saveNow(true); });

(async () => {
  try {
    await loadMeta();
    const m = /#s=(\d+)/.exec(location.hash);
    const i = m ? Math.min(+m[1], META.sessions.length - 1) : 0;
    await openSession(i);
  } catch (e) {
    setStatus("error", "could not load: " + e.message);
  }
})();
