// tsunagu's web screens: the incoming-call screen (着信通知画面, /ui/live) and the call
// log screen (/ui/calls). They call the node's own API with an operator's key (all its
// calls) or an advertiser's (the API answers with that advertiser's calls alone), which
// is kept in this tab's session storage only (a `#key=` fragment, never sent to a
// server, is taken and removed from the address bar). Every value from the API is
// written as text (textContent), never as HTML.
"use strict";

const KEY = "tsunagu_operator_key";

function takeKey() {
  const m = location.hash.match(/(?:^#|&)key=([^&]+)/);
  if (m) {
    let key = m[1];
    try { key = decodeURIComponent(key); } catch (err) { /* taken as written */ }
    sessionStorage.setItem(KEY, key);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(KEY);
}

function status(text) {
  document.getElementById("status").textContent = text;
}

function askKey(why) {
  document.getElementById("screen").hidden = true;
  const form = document.getElementById("key-form");
  form.hidden = false;
  if (why) status(why);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, document.getElementById("key-input").value.trim());
    location.reload();
  });
}

function forgetButton() {
  const b = document.getElementById("forget");
  b.hidden = false;
  b.addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    location.reload();
  });
}

// `GET path` of the node's API with the page's key; a key the API refuses (401) is
// forgotten and the key form comes back (`refused` is then set on the answer).
async function api(key, path) {
  const res = await fetch(path, { headers: { Authorization: "Bearer " + key }, cache: "no-store" });
  if (res.status === 401) {
    sessionStorage.removeItem(KEY);
    askKey("That key was refused.");
    res.refused = true;
  }
  return res;
}

// Why the API did not answer 2xx: its error message, else the status.
async function whyNot(res) {
  try { return (await res.json()).error.message; } catch (err) { return "the API answered " + res.status; }
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function time(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString();
}

function source(call) {
  const p = call.tracking_params || {};
  return Object.keys(p).sort().map((k) => k + "=" + p[k]).join(" ");
}

// The line a call rings or was answered on: its destination, else its last attempt's.
function line(call) {
  if (call.destination_number) return call.destination_number;
  const a = call.attempts || [];
  return a.length ? a[a.length - 1].destination : "";
}

function seconds(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  return Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
}

// ---- the incoming-call screen ----

const LABELS = {
  started: "受付 started", queued: "待ち queued", ringing: "呼出中 ringing",
  answered: "通話中 answered", ended: "終了 ended",
};
const ENDED_KEPT_MS = 5 * 60 * 1000;
const ROWS_MAX = 500;

function live(key) {
  const body = document.querySelector("#live tbody");
  const rows = new Map(); // call_id -> {tr, call, state, since}
  const adv = new URLSearchParams(location.search).get("advertiser_id");
  document.getElementById("scope").textContent = adv ? "Advertiser " + adv : "Every advertiser of this operator";
  const url = "/v1/calls/stream" + (adv ? "?advertiser_id=" + encodeURIComponent(adv) : "");

  function render(entry) {
    const c = entry.call;
    const tr = entry.tr;
    tr.replaceChildren();
    tr.dataset.callId = c.call_id;
    tr.dataset.state = entry.state;
    const label = entry.state === "ended" && c.result ? LABELS.ended + " · " + c.result : LABELS[entry.state];
    cell(tr, label);
    cell(tr, time(c.started_at), "num");
    cell(tr, c.caller_number + (c.caller_kind ? " (" + c.caller_kind + ")" : ""), "num");
    cell(tr, c.tracking_number, "num");
    cell(tr, source(c), "source");
    cell(tr, line(c), "num");
    const t = cell(tr, "", "num");
    t.dataset.role = "clock";
  }

  function tick() {
    const now = Date.now();
    for (const [id, e] of rows) {
      if (e.state === "ended" && now - e.since > ENDED_KEPT_MS) {
        e.tr.remove();
        rows.delete(id);
        continue;
      }
      const c = e.call;
      const clock = e.tr.querySelector('[data-role="clock"]');
      if (e.state === "answered" && c.answered_at) clock.textContent = seconds(now - Date.parse(c.answered_at));
      else if (e.state === "ended") clock.textContent = c.talk_seconds ? seconds(c.talk_seconds * 1000) : "";
      else clock.textContent = seconds(now - Date.parse(c.started_at));
    }
  }

  // When the stream now open was opened: on a reconnect, calls shown before that the
  // new stream does not tell by its `stream.ready` ended (or went) meanwhile, and are
  // looked up.
  let openedAt = 0;
  let reconnected = false;

  async function lookUp(id, e) {
    const res = await api(key, "/v1/calls/" + encodeURIComponent(id));
    if (res.status === 404) {
      e.tr.remove();
      rows.delete(id);
    } else if (res.ok) {
      const call = await res.json();
      if (call.state === "ended") handle("call.ended", { call });
    }
  }

  function reconcile() {
    if (!reconnected) return;
    for (const [id, e] of rows) {
      if (e.state !== "ended" && e.since < openedAt) lookUp(id, e).catch(() => {});
    }
  }

  function handle(type, data) {
    if (type === "stream.ready") return reconcile();
    const state = type.replace(/^call\./, "");
    if (!LABELS[state] || !data || !data.call) return;
    const c = data.call;
    let e = rows.get(c.call_id);
    if (!e) {
      e = { tr: document.createElement("tr") };
      rows.set(c.call_id, e);
      body.prepend(e.tr);
      while (rows.size > ROWS_MAX) {
        const [oldest] = rows.keys();
        rows.get(oldest).tr.remove();
        rows.delete(oldest);
      }
    }
    e.call = c;
    e.state = state;
    e.since = Date.now();
    render(e);
    tick();
  }

  async function connect() {
    let res;
    try {
      res = await api(key, url);
    } catch (err) {
      return "unreachable";
    }
    if (res.refused) return "refused";
    if (res.status === 400 || res.status === 403) {
      // Asked what this key may not see (another advertiser's calls): trying again
      // changes nothing, so the screen stops and says why.
      status(await whyNot(res));
      return "forbidden";
    }
    if (!res.ok || !res.body) return "answered " + res.status;
    status("live");
    openedAt = Date.now();
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return "closed";
      buf += decoder.decode(value, { stream: true });
      let at;
      while ((at = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, at);
        buf = buf.slice(at + 2);
        let type = "message";
        const data = [];
        for (const l of block.split("\n")) {
          if (l.startsWith("event:")) type = l.slice(6).trim();
          else if (l.startsWith("data:")) data.push(l.slice(5).trim());
        }
        if (data.length) {
          try { handle(type, JSON.parse(data.join("\n"))); } catch (err) { /* a frame we cannot read */ }
        }
      }
    }
  }

  (async () => {
    setInterval(tick, 1000);
    for (;;) {
      const why = await connect();
      if (why === "refused" || why === "forbidden") return;
      reconnected = true;
      status("reconnecting (" + why + ")…");
      await new Promise((r) => setTimeout(r, 2000));
    }
  })();
}

// ---- the call log screen ----

function calls(key) {
  const form = document.getElementById("search");
  const body = document.querySelector("#calls tbody");
  const more = document.getElementById("more");
  let shown = [];
  let cursor = null;

  function query(extra) {
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(form)) {
      if (!v) continue;
      const t = k === "from" || k === "to" ? new Date(v) : null;
      if (t && isNaN(t)) continue; // a date the browser could not read: no bound
      q.set(k, t ? t.toISOString() : v);
    }
    for (const [k, v] of Object.entries(extra || {})) q.set(k, v);
    return q;
  }

  async function get(q) {
    const res = await api(key, "/v1/calls?" + q);
    if (res.refused) return null;
    if (!res.ok) {
      status(await whyNot(res));
      return null;
    }
    return res;
  }

  // A call's recording: fetched with the key (an <audio> element cannot send one)
  // into a blob the player below its row plays; a second click closes it. The page's
  // policy lets media come from blob: URLs alone. Every blob URL made is given back
  // when its player closes or the table is drawn again (a recording is megabytes).
  const blobs = new Set();
  function forget(url) {
    URL.revokeObjectURL(url);
    blobs.delete(url);
  }

  async function listen(c, tr, button) {
    const open = tr.nextElementSibling;
    if (open && open.classList.contains("player")) {
      const audio = open.querySelector("audio");
      if (audio && audio.src) forget(audio.src);
      open.remove();
      button.textContent = "▶ Listen";
      return;
    }
    button.disabled = true; // one fetch at a time per row
    status("fetching the recording…");
    let res;
    try {
      res = await api(key, "/v1/calls/" + encodeURIComponent(c.call_id) + "/recording");
    } finally {
      button.disabled = false;
    }
    if (res.refused) return;
    if (!res.ok) {
      status("recording: " + (await whyNot(res)));
      return;
    }
    const blob = await res.blob();
    if (!tr.isConnected) return; // the table was drawn again meanwhile
    const row = document.createElement("tr");
    row.className = "player";
    const td = document.createElement("td");
    td.colSpan = tr.children.length;
    const audio = document.createElement("audio");
    audio.controls = true;
    const length = document.createElement("span");
    length.className = "duration";
    audio.addEventListener("loadedmetadata", () => {
      length.textContent = " " + seconds(audio.duration * 1000);
    });
    audio.addEventListener("error", () => { length.textContent = " (the browser cannot play it)"; });
    audio.src = URL.createObjectURL(blob);
    blobs.add(audio.src);
    td.append(audio, length);
    row.appendChild(td);
    tr.after(row);
    button.textContent = "■ Close";
    status("recording of " + c.call_id);
  }

  function draw() {
    for (const url of [...blobs]) forget(url);
    body.replaceChildren();
    for (const c of shown) {
      const tr = document.createElement("tr");
      tr.dataset.callId = c.call_id;
      cell(tr, time(c.started_at), "num");
      cell(tr, c.caller_number, "num");
      cell(tr, c.caller_kind);
      cell(tr, c.tracking_number, "num");
      cell(tr, line(c), "num");
      cell(tr, c.result);
      cell(tr, c.validity);
      cell(tr, c.ring_seconds, "num");
      cell(tr, c.talk_seconds, "num");
      cell(tr, source(c), "source");
      const rec = cell(tr, "");
      if (c.recording) {
        const b = document.createElement("button");
        b.type = "button";
        b.className = "listen";
        b.textContent = "▶ Listen";
        b.addEventListener("click", () => listen(c, tr, b));
        rec.appendChild(b);
      }
      body.appendChild(tr);
    }
    status(shown.length + " calls" + (cursor ? " (more on the next page)" : ""));
  }

  async function search(next) {
    const q = query({ limit: "100" });
    if (next && cursor) q.set("cursor", cursor);
    status("searching…");
    const res = await get(q);
    if (!res) return;
    const page = await res.json();
    shown = next ? shown.concat(page.calls) : page.calls;
    cursor = page.next_cursor;
    more.hidden = !cursor;
    draw();
  }

  form.addEventListener("submit", (e) => { e.preventDefault(); search(false); });
  more.addEventListener("click", () => search(true));
  document.getElementById("csv").addEventListener("click", async () => {
    status("exporting…");
    const res = await get(query({ format: "csv" }));
    if (!res) return;
    const a = document.createElement("a");
    a.href = URL.createObjectURL(await res.blob());
    a.download = "calls.csv";
    document.body.appendChild(a);
    a.click();
    a.remove();
    status("exported");
  });
  let by = null;
  for (const th of document.querySelectorAll("#calls th[data-key]")) {
    th.addEventListener("click", () => {
      const k = th.dataset.key;
      const dir = by === k ? -1 : 1;
      by = dir === 1 ? k : null;
      const v = (c) => (k === "source" ? source(c) : k === "destination_number" ? line(c) : c[k]) ?? "";
      shown.sort((a, b) => (v(a) < v(b) ? -dir : v(a) > v(b) ? dir : 0));
      draw();
    });
  }
  search(false);
}

document.addEventListener("DOMContentLoaded", () => {
  const key = takeKey();
  if (!key) return askKey();
  document.getElementById("screen").hidden = false;
  forgetButton();
  const screen = document.body.dataset.screen;
  if (screen === "live") live(key);
  else if (screen === "calls") calls(key);
});
