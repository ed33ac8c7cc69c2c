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

  function params() {
    var p = { session_id: sessionId(), landing_url: location.href };
    if (document.referrer) p.referrer = document.referrer;
    var q = new URLSearchParams(location.search);
    q.forEach(function (v, k) {
      if (k === "gclid" || k === "keyword" || k.indexOf("utm_") === 0) p[k] = v.slice(0, 2000);
    });
    var ga = gaClientId();
    if (ga) p.client_id = ga;
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
