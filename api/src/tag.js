/* tsunagu page tag: swaps tracking numbers on a page (dynamic issuance, 動的発番).
 *
 *   <script src="https://calls.example.com/v1/tag.js" async></script>
 *   <a data-tsunagu-pool="pool_..." data-tsunagu-format="###-####-####">03-1111-2222</a>
 *
 * For every pool named on the page it asks tsunagu for a number with this visit's
 * tracking parameters (session id, landing URL, referrer, gclid, utm_*, GA client id),
 * writes it into the marked elements (and tel: links), and re-asks while the page is
 * open, which extends the lease. The pool must list this page's origin in
 * allowed_origins. On any failure the page keeps the number it was written with.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script) return;
  var api = new URL(script.src).origin;
  var KEY = "tsunagu_session";

  function sessionId() {
    try {
      var s = window.localStorage.getItem(KEY);
      if (!s) {
        s = "s" + Date.now().toString(36) + Math.random().toString(36).slice(2, 10);
        window.localStorage.setItem(KEY, s);
      }
      return s;
    } catch (e) {
      return "s" + Math.random().toString(36).slice(2, 12);
    }
  }

  function gaClientId() {
    var m = document.cookie.match(/(?:^|;\s*)_ga=GA\d\.\d\.(\d+\.\d+)/);
    return m ? m[1] : null;
  }

  // What the API takes of a page's parameters (api/src/numbers.rs, validate_params):
  // at most 50 keys of up to 100 bytes, values of up to 2000 bytes, 8 KiB in all.
  // A visit from a long ad URL (click ids, many utm_* keys) is cut to fit rather than
  // refused, which would leave the page without a tracking number.
  var MAX_KEYS = 50, MAX_KEY = 100, MAX_VALUE = 2000, MAX_TOTAL = 8192;

  function bytes(v) {
    return new TextEncoder().encode(v).length;
  }

  // The longest prefix of `v` that takes at most `max` bytes as UTF-8.
  function fit(v, max) {
    v = String(v);
    if (bytes(v) <= max) return v;
    var lo = 0, hi = Math.min(v.length, max);
    while (lo < hi) {
      var mid = (lo + hi + 1) >> 1;
      if (bytes(v.slice(0, mid)) <= max) lo = mid; else hi = mid - 1;
    }
    return v.slice(0, lo);
  }

  function params() {
    var p = {}, keys = 0, total = 0;
    // In order of worth: what comes later is left out when the budget runs out.
    function put(k, v) {
      var room = Math.min(MAX_VALUE, MAX_TOTAL - total - bytes(k));
      if (keys >= MAX_KEYS || bytes(k) > MAX_KEY || room < 0 || p.hasOwnProperty(k)) return;
      v = fit(v, room);
      p[k] = v;
      keys += 1;
      total += bytes(k) + bytes(v);
    }
    put("session_id", sessionId());
    put("landing_url", location.href);
    if (document.referrer) put("referrer", document.referrer);
    var ga = gaClientId();
    if (ga) put("client_id", ga);
    var q = new URLSearchParams(location.search);
    q.forEach(function (v, k) {
      if (k === "gclid" || k === "keyword" || k.indexOf("utm_") === 0) put(k, v);
    });
    return p;
  }

  function format(number, pattern) {
    if (!pattern) return number;
    var slots = (pattern.match(/#/g) || []).length;
    if (slots !== number.length) return number;
    var i = 0;
    return pattern.replace(/#/g, function () { return number.charAt(i++); });
  }

  function show(pool, number) {
    var els = document.querySelectorAll('[data-tsunagu-pool="' + pool + '"]');
    for (var i = 0; i < els.length; i++) {
      var el = els[i];
      el.textContent = format(number, el.getAttribute("data-tsunagu-format"));
      if (el.tagName === "A") el.setAttribute("href", "tel:" + number);
      el.setAttribute("data-tsunagu-number", number);
    }
  }

  function issue(pool) {
    return fetch(api + "/v1/pools/" + encodeURIComponent(pool) + "/issue", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ params: params() }),
      credentials: "omit",
      keepalive: true
    }).then(function (r) {
      if (!r.ok) throw new Error("tsunagu issue: HTTP " + r.status);
      return r.json();
    }).then(function (a) {
      show(pool, a.number);
      if (a.overflow || !a.expires_at) return; // nothing to keep alive
      // Re-issue at half the remaining lease (15 s to 10 min) while the page is open.
      var left = Date.parse(a.expires_at) - Date.now();
      var wait = Math.min(Math.max(left / 2, 15000), 600000);
      setTimeout(function () { keepAlive(pool); }, wait);
    });
  }

  function keepAlive(pool) {
    if (document.visibilityState === "hidden") {
      document.addEventListener("visibilitychange", function again() {
        if (document.visibilityState === "visible") {
          document.removeEventListener("visibilitychange", again);
          keepAlive(pool);
        }
      });
      return;
    }
    issue(pool).catch(function () {});
  }

  function start() {
    var seen = {};
    var els = document.querySelectorAll("[data-tsunagu-pool]");
    for (var i = 0; i < els.length; i++) {
      var pool = els[i].getAttribute("data-tsunagu-pool");
      if (pool && !seen[pool]) {
        seen[pool] = true;
        issue(pool).catch(function (e) { if (window.console) console.warn(String(e)); });
      }
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
