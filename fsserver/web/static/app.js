// The FS web page: browse a share, download, upload, history, restore, deleted files and a live
// activity feed, all over the HTTP API at /api/v1 (see /api/v1/openapi.json).
"use strict";

const API = "/api/v1";
const TOKEN_KEY = "fs.token";
const SHARE_KEY = "fs.share";
const MAX_ACTIVITY = 50;
const $ = (sel) => document.querySelector(sel);
// sessionStorage only: the token dies with the tab and is never sent as a cookie.
const store = window.sessionStorage;

const state = {
  token: null,       // null: logged out; "" : a server without tokens
  share: null,
  folder: "",        // "" or "a/b/"
  maxSeen: 0,        // the largest version the listing showed
  listGen: 0,        // drops the answers of listings overtaken by newer ones
  feed: null,        // the AbortController of the change stream
  feedSince: 0,      // the last version the change stream delivered
  refreshTimer: 0,
  changed: new Set(),
  historyPath: null,
  uploads: Promise.resolve(), // uploads run one after the other
};

// ---- small helpers ----

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "data") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((c) => c != null).map((c) => (c instanceof Node ? c : String(c))));
  return node;
}

const enc = encodeURIComponent;
const encPath = (path) => path.split("/").map(enc).join("/");
const fileUrl = (path) => `${API}/shares/${enc(state.share)}/files/${encPath(path)}`;
const pad = (n) => String(n).padStart(2, "0");

function humanSize(n) {
  if (n < 1024) return `${n} B`;
  let i = 0;
  for (n /= 1024; n >= 1024 && i < 3; i += 1) n /= 1024;
  return `${n.toFixed(1)} ${["KiB", "MiB", "GiB", "TiB"][i]}`;
}

const localTime = (iso) => (iso ? new Date(iso).toLocaleString() : "—");

const clock = (d = new Date()) => [d.getHours(), d.getMinutes(), d.getSeconds()].map(pad).join(":");

function button(cls, text, label) {
  return el("button", { type: "button", class: cls, "aria-label": label }, text);
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

// ---- API calls and errors ----

function authHeaders(extra = {}) {
  const headers = { ...extra };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  return headers;
}

// An Error from the API's JSON {"error": {"code", "message"}} (or the status line if not JSON).
function httpError(status, statusText, body) {
  const { code, message } = (body && body.error) || {};
  return Object.assign(new Error(message || `${status} ${statusText}`.trim()),
    { status, code: code || `HTTP_${status}` });
}

async function errorFrom(res) {
  return httpError(res.status, res.statusText, await res.json().catch(() => null));
}

async function api(path, opts = {}) {
  const res = await fetch(API + path, { ...opts, headers: authHeaders(opts.headers), cache: "no-store" });
  if (!res.ok) throw await errorFrom(res);
  setError("");
  return res.json();
}

// Every page of a listing (files or deleted), following next_cursor.
async function fetchAll(path, prefix) {
  const files = [];
  let cursor = null;
  do {
    const query = new URLSearchParams({ prefix, limit: "1000" });
    if (cursor) query.set("cursor", cursor);
    const page = await api(`${path}?${query}`);
    files.push(...page.files);
    cursor = page.next_cursor;
  } while (cursor);
  return files;
}

function setError(message) { // "" clears it
  $("#error").textContent = message;
  $("#error").hidden = !message;
}

function fail(err) {
  if (err.name === "AbortError") return;
  if (err.status === 401) showLogin(); // a bad or stale token: ask again
  // fetch() rejects with a TypeError when the server cannot be reached at all.
  setError(err instanceof TypeError ? `The server could not be reached (${err.message}).` : err.message);
}

// ---- login, logout, shares ----

function showLogin() {
  stopFeed();
  state.token = null;
  store.removeItem(TOKEN_KEY);
  $("#app").hidden = true;
  $("#session").hidden = true;
  $("#login-form").hidden = false;
  $("#token").focus();
}

async function login(token) {
  state.token = token;
  let shares;
  try {
    ({ shares } = await api("/shares"));
  } catch (err) { fail(err); return; }
  if (!shares.length) { setError("This token opens no share."); return; }
  store.setItem(TOKEN_KEY, token);
  $("#token").value = "";
  $("#login-form").hidden = true;
  $("#session").hidden = false;
  $("#app").hidden = false;
  const select = $("#share");
  select.replaceChildren(...shares.map((s) => el("option", { value: s.name },
    `${s.name} (${s.files} files, ${humanSize(s.bytes)})`)));
  const saved = store.getItem(SHARE_KEY);
  await selectShare(shares.some((s) => s.name === saved) ? saved : shares[0].name);
}

function logout() {
  showLogin();
  setError("");
  for (const sel of ["#files tbody", "#history tbody", "#deleted tbody", "#activity", "#crumbs"]) {
    $(sel).replaceChildren();
  }
  $("#history").hidden = true;
  setDeletedOpen(false);
}

async function selectShare(name) {
  stopFeed();
  state.share = name;
  state.folder = "";
  state.maxSeen = 0;
  store.setItem(SHARE_KEY, name);
  $("#share").value = name;
  $("#activity").replaceChildren(); // the activity is per share
  closeHistory();
  if (!$("#deleted").hidden) loadDeleted();
  // The root listing holds every live file, so its largest version is where the feed starts.
  if (await refresh()) startFeed();
}

// ---- the share browser ----

async function refresh() {
  const gen = ++state.listGen;
  const { share, folder } = state;
  try {
    const files = await fetchAll(`/shares/${enc(share)}/files`, folder);
    if (gen !== state.listGen) return false;
    for (const f of files) state.maxSeen = Math.max(state.maxSeen, f.version);
    renderCrumbs();
    renderFiles(files);
    return true;
  } catch (err) {
    if (gen === state.listGen) fail(err);
    return false;
  }
}

const openFolder = (folder) => { state.folder = folder; refresh(); };

function renderCrumbs() {
  const parts = state.folder.split("/").filter(Boolean);
  const crumbs = [el("button", { type: "button", class: "crumb", data: { folder: "" } }, state.share)];
  parts.forEach((part, i) => {
    crumbs.push(el("span", { class: "sep", "aria-hidden": "true" }, "/"));
    const folder = `${parts.slice(0, i + 1).join("/")}/`;
    crumbs.push(el("button", { type: "button", class: "crumb", data: { folder } }, part));
  });
  crumbs[crumbs.length - 1].setAttribute("aria-current", "location");
  $("#crumbs").replaceChildren(...crumbs);
}

// The API lists files only; folders are derived from the paths under the current folder.
function renderFiles(files) {
  const folder = state.folder;
  const dirs = new Map();
  const plain = [];
  for (const f of files) {
    if (!f.path.startsWith(folder)) continue;
    const rest = f.path.slice(folder.length);
    const slash = rest.indexOf("/");
    if (slash < 0) { plain.push(f); continue; }
    const name = rest.slice(0, slash);
    const dir = dirs.get(name) || { size: 0, count: 0 };
    dir.size += f.size;
    dir.count += 1;
    dirs.set(name, dir);
  }
  const rows = [...dirs.keys()].sort().map((name) => {
    const { size, count } = dirs.get(name);
    return el("tr", { class: "folder", data: { path: `${folder}${name}/` } },
      el("td", {}, el("button", { type: "button", class: "open" }, `${name}/`), " ",
        el("span", { class: "muted count" }, `${count} file${count === 1 ? "" : "s"}`)),
      el("td", { class: "num" }, humanSize(size)), el("td"), el("td"), el("td"));
  });
  for (const f of plain) {
    const name = f.path.slice(folder.length);
    rows.push(el("tr", { class: "file", data: { path: f.path } },
      el("td", { class: "name" }, name),
      el("td", { class: "num" }, humanSize(f.size)),
      el("td", { class: "num" }, f.version),
      el("td", {}, localTime(f.mtime)),
      el("td", { class: "actions" },
        button("download", "Download", `Download ${name}`),
        button("history", "History", `History of ${name}`),
        button("delete danger", "Delete", `Delete ${name}`))));
  }
  $("#files tbody").replaceChildren(...rows);
  $("#empty").hidden = rows.length > 0;
}

// An <a href> cannot send the Authorization header: fetch the bytes, then save a Blob URL.
async function download(path, version) {
  try {
    const query = version ? `?version=${version}` : "";
    const res = await fetch(fileUrl(path) + query, { headers: authHeaders(), cache: "no-store" });
    if (!res.ok) throw await errorFrom(res);
    const url = URL.createObjectURL(await res.blob());
    const link = el("a", { href: url, download: path.split("/").pop(), hidden: "" });
    document.body.append(link);
    link.click();
    link.remove();
    // The browser reads the blob after click() returns: revoke it a little later.
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    setError("");
  } catch (err) { fail(err); }
}

async function removeFile(path) {
  if (!window.confirm(`Delete ${path}? Its versions are kept.`)) return;
  try {
    await api(`/shares/${enc(state.share)}/files/${encPath(path)}`, { method: "DELETE" });
  } catch (err) { fail(err); return; }
  refresh();
  if (!$("#deleted").hidden) loadDeleted();
}

// ---- uploads ----

function queueUploads(fileList) {
  const { share, folder } = state; // files go where they were dropped, even if one navigates on
  for (const file of Array.from(fileList)) {
    state.uploads = state.uploads.then(() => uploadOne(share, folder, file));
  }
}

function setUpload(percent, text) {
  $("#upload-progress").value = percent;
  $("#upload-status").textContent = text;
}

// XMLHttpRequest rather than fetch(): only it reports upload progress.
function uploadOne(share, folder, file) {
  return new Promise((resolve) => {
    const name = file.name;
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", `${API}/shares/${enc(share)}/files/${encPath(folder + name)}`);
    const headers = authHeaders({ "Content-Type": "application/octet-stream" });
    for (const [key, value] of Object.entries(headers)) xhr.setRequestHeader(key, value);
    if (Number.isSafeInteger(file.lastModified)) {
      // Milliseconds to nanoseconds with BigInt: a float would lose digits.
      xhr.setRequestHeader("X-FS-Mtime-Ns", (BigInt(file.lastModified) * 1000000n).toString());
    }
    xhr.upload.onprogress = (ev) => {
      if (ev.lengthComputable) {
        const percent = Math.round((100 * ev.loaded) / ev.total);
        setUpload(percent, `uploading ${name} ${percent}%`);
      }
    };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status === 201 || xhr.status === 200) {
        setUpload(100, `uploaded ${name} (version ${body ? body.version : "?"})`);
        setError("");
        if (share === state.share) refresh();
      } else {
        setUpload(0, `upload of ${name} failed`);
        fail(httpError(xhr.status, xhr.statusText, body));
      }
      resolve();
    };
    xhr.onerror = () => {
      setUpload(0, `upload of ${name} failed`);
      setError(`Upload of ${name} failed: the server could not be reached.`);
      resolve();
    };
    setUpload(0, `uploading ${name} 0%`);
    xhr.send(file);
  });
}

// ---- history, restore, deleted files ----

async function openHistory(path) {
  state.historyPath = path;
  $("#history-title").textContent = path;
  $("#history-status").textContent = "";
  $("#history tbody").replaceChildren();
  $("#history").hidden = false;
  await loadHistory();
  $("#history").scrollIntoView({ block: "nearest" });
}

function closeHistory() {
  state.historyPath = null;
  $("#history").hidden = true;
}

async function loadHistory() {
  const path = state.historyPath;
  let data;
  try {
    data = await api(`/shares/${enc(state.share)}/versions/${encPath(path)}`);
  } catch (err) { fail(err); return; }
  if (path !== state.historyPath) return;
  $("#history tbody").replaceChildren(...data.versions.map((v) => {
    const actions = el("td", { class: "actions" });
    if (v.state === "current" || v.state === "kept") {
      actions.append(button("download", "Download", `Download version ${v.version}`));
    }
    if (v.state === "kept") actions.append(button("restore", "Restore", `Restore version ${v.version}`));
    return el("tr", { class: v.state, data: { version: v.version } },
      el("td", { class: "num" }, v.version), el("td", {}, v.state),
      el("td", { class: "num" }, v.state === "deleted" ? "—" : humanSize(v.size)),
      el("td", {}, localTime(v.written)), el("td", {}, v.writer || "—"), actions);
  }));
}

// Restore a kept version (as a new one), from the history panel or the deleted list.
async function restore(path, version, fromHistory) {
  let done;
  try {
    const query = new URLSearchParams({ version: String(version) });
    done = await api(`/shares/${enc(state.share)}/restore/${encPath(path)}?${query}`, { method: "POST" });
  } catch (err) { fail(err); return; }
  if (fromHistory) $("#history-status").textContent = `restored as version ${done.version}`;
  else $("#deleted-status").textContent = `restored ${path} as version ${done.version}`;
  refresh();
  if (state.historyPath === path) loadHistory();
  if (!$("#deleted").hidden) loadDeleted();
}

function setDeletedOpen(open) {
  $("#deleted").hidden = !open;
  $("#show-deleted").setAttribute("aria-expanded", String(open));
  if (open) loadDeleted();
}

async function loadDeleted() {
  const share = state.share;
  let files;
  try {
    files = await fetchAll(`/shares/${enc(share)}/deleted`, "");
  } catch (err) { fail(err); return; }
  if (share !== state.share) return;
  $("#deleted tbody").replaceChildren(...files.map((f) =>
    el("tr", { data: { path: f.path, version: f.version } },
      el("td", { class: "name" }, f.path), el("td", { class: "num" }, humanSize(f.size)),
      el("td", { class: "num" }, f.version), el("td", {}, localTime(f.mtime)),
      el("td", { class: "actions" }, button("history", "History", `History of ${f.path}`),
        button("restore", "Restore", `Restore ${f.path}`)))));
  $("#deleted-empty").hidden = files.length > 0;
}

// ---- live activity: Server-Sent Events read with fetch(), since EventSource has no headers ----

function startFeed() {
  stopFeed();
  state.feed = new AbortController();
  state.feedSince = state.maxSeen;
  runFeed(state.share, state.feed.signal);
}

function stopFeed() {
  if (state.feed) state.feed.abort();
  state.feed = null;
  $("#feed-status").textContent = "";
}

async function runFeed(share, signal) {
  while (!signal.aborted) {
    $("#feed-status").textContent = "(connecting)";
    try {
      const query = new URLSearchParams({ since: String(state.feedSince) });
      const res = await fetch(`${API}/shares/${enc(share)}/changes?${query}`,
        { headers: authHeaders({ Accept: "text/event-stream" }), signal, cache: "no-store" });
      if (!res.ok) {
        const err = await errorFrom(res);
        if (err.status < 500) { fail(err); $("#feed-status").textContent = "(stopped)"; return; }
        throw err;
      }
      await readEvents(res.body, onFeedEvent);
    } catch (err) {
      if (signal.aborted) return;
    }
    $("#feed-status").textContent = "(reconnecting)";
    await sleep(2000, signal); // then resume after the last version seen
  }
}

async function readEvents(body, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let type = "";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end).replace(/\r$/, "");
      buffer = buffer.slice(end + 1);
      if (line === "") { // a blank line ends an event
        if (data.length) onEvent(type || "message", data.join("\n"));
        type = "";
        data = [];
      } else if (!line.startsWith(":")) { // ':' lines are comments (keep-alives)
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") type = text;
        else if (field === "data") data.push(text);
      }
    }
  }
}

function onFeedEvent(type, data) {
  if (type === "ready") { $("#feed-status").textContent = "(live)"; return; }
  if (type === "error") { // the server was replaced, or we were away too long: from the start
    state.feedSince = 0;
    $("#feed-status").textContent = "(starting over)";
    return;
  }
  if (type !== "change") return;
  let change;
  try { change = JSON.parse(data); } catch { return; }
  state.feedSince = Math.max(state.feedSince, change.version);
  const what = change.deleted
    ? `deleted ${change.path} (v${change.version})`
    : `changed ${change.path} (v${change.version}${change.size == null ? "" : `, ${humanSize(change.size)}`})`;
  const list = $("#activity");
  list.prepend(el("li", { class: change.deleted ? "deleted" : "changed" }, `${clock()} ${what}`));
  while (list.children.length > MAX_ACTIVITY) list.lastElementChild.remove();
  scheduleRefresh(change.path);
}

// A burst of changes makes one refresh, ~300 ms after the last of them.
function scheduleRefresh(path) {
  state.changed.add(path);
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(() => {
    const changed = state.changed;
    state.changed = new Set();
    if (state.token === null) return;
    refresh();
    if (!$("#deleted").hidden) loadDeleted();
    if (state.historyPath && changed.has(state.historyPath)) loadHistory();
  }, 300);
}

// ---- wiring ----

function rowAction(ev, handlers) {
  const btn = ev.target.closest("button");
  const row = ev.target.closest("tr");
  if (!btn || !row) return;
  for (const [cls, handler] of Object.entries(handlers)) {
    if (btn.classList.contains(cls)) { handler(row); return; }
  }
}

$("#login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  setError("");
  login($("#token").value);
});
$("#logout").addEventListener("click", logout);
$("#share").addEventListener("change", (ev) => selectShare(ev.target.value));
$("#crumbs").addEventListener("click", (ev) => {
  const crumb = ev.target.closest("button.crumb");
  if (crumb) openFolder(crumb.dataset.folder);
});
$("#files tbody").addEventListener("click", (ev) => {
  const row = ev.target.closest("tr");
  if (row && row.classList.contains("folder")) { openFolder(row.dataset.path); return; }
  rowAction(ev, {
    download: (r) => download(r.dataset.path),
    history: (r) => openHistory(r.dataset.path),
    delete: (r) => removeFile(r.dataset.path),
  });
});
$("#history tbody").addEventListener("click", (ev) => rowAction(ev, {
  download: (r) => download(state.historyPath, r.dataset.version),
  restore: (r) => restore(state.historyPath, r.dataset.version, true),
}));
$("#history-close").addEventListener("click", closeHistory);
$("#show-deleted").addEventListener("click", () => setDeletedOpen($("#deleted").hidden));
$("#deleted tbody").addEventListener("click", (ev) => rowAction(ev, {
  history: (r) => openHistory(r.dataset.path),
  restore: (r) => restore(r.dataset.path, r.dataset.version, false),
}));

const drop = $("#drop");
$("#upload-input").addEventListener("change", (ev) => {
  queueUploads(ev.target.files);
  ev.target.value = ""; // so choosing the same file again uploads it again
});
drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (ev) => {
  ev.preventDefault();
  drop.classList.remove("over");
  if (ev.dataTransfer && ev.dataTransfer.files.length) queueUploads(ev.dataTransfer.files);
});
// A file dropped beside the zone must not make the browser navigate away to it.
window.addEventListener("dragover", (ev) => ev.preventDefault());
window.addEventListener("drop", (ev) => ev.preventDefault());

const savedToken = store.getItem(TOKEN_KEY);
if (savedToken !== null) login(savedToken);
else $("#token").focus();
