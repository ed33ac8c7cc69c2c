/* tsunagu page tag: swaps tracking numbers on a page (dynamic issuance, 動的発番).
 *
 *   <script src="https://calls.example.com/v1/tag.js" async></script>
 *   <a data-tsunagu-pool="pool_..." data-tsunagu-format="###-####-####">03-1111-2222</a>
 *
 * For every pool named on the page it asks tsunagu for a number with this visit's
 * tracking parameters (session id, landing URL, referrer, gclid, utm_*, GA client id),
 * writes it into the marked elements (and tel: links), and re-asks while the page is
 * open, which extends the lease. The pool must list this page's origin in
 * allowed_origins. On any failure the page keeps the number it was written with; a
 * re-ask that fails is tried again (after the answer's Retry-After, else 5 s doubling
 * to a minute), and once the lease has surely run out the page gets its own number
 * back: a number whose lease ended goes to the next visitor, whose visit its calls
 * would then carry.
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

  // The longest prefix of `v` that takes at most `max` bytes as UTF-8, never half of
  // a character outside the BMP (an emoji): the API refuses a lone surrogate.
  function fit(v, max) {
    v = String(v);
    if (bytes(v) <= max) return v;
    var lo = 0, hi = Math.min(v.length, max);
    while (lo < hi) {
      var mid = (lo + hi + 1) >> 1;
      if (bytes(v.slice(0, mid)) <= max) lo = mid; else hi = mid - 1;
    }
    var last = v.charCodeAt(lo - 1);
    if (lo > 0 && last >= 0xd800 && last <= 0xdbff) lo -= 1;
    return v.slice(0, lo);
  }

  // The API refuses control characters and line separators (they would reach notices
  // and logs as line breaks): a link with `%0A` in a utm_* value loses them here
  // instead of costing the visit its tracking number.
  function clean(v) {
    return String(v).replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g, "");
  }

  function params() {
    var p = {}, keys = 0, total = 0;
    // In order of worth: what comes later is left out when the budget runs out.
    function put(k, v) {
      k = clean(k);
      var room = Math.min(MAX_VALUE, MAX_TOTAL - total - bytes(k));
      if (!k || keys >= MAX_KEYS || bytes(k) > MAX_KEY || room < 0 || p.hasOwnProperty(k)) return;
      v = fit(clean(v), room);
      p[k] = v;
      keys += 1;
      total += bytes(k) + bytes(v);
    }
    put("session_id", sessionId());
    // Without the fragment: sign-in links carry tokens there (#access_token=...), which
    // would reach call logs, exports, webhooks and notices.
    put("landing_url", location.origin + location.pathname + location.search);
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

  var originals = new Map(); // element -> its own text and href, before any swap

  function show(pool, number) {
    var els = document.querySelectorAll('[data-tsunagu-pool="' + pool + '"]');
    for (var i = 0; i < els.length; i++) {
      var el = els[i];
      if (!originals.has(el)) {
        originals.set(el, { text: el.textContent, href: el.getAttribute("href") });
      }
      el.textContent = format(number, el.getAttribute("data-tsunagu-format"));
      if (el.tagName === "A") el.setAttribute("href", "tel:" + number);
      el.setAttribute("data-tsunagu-number", number);
    }
  }

  // The page's own number again, once the lease of the one shown has run out.
  function unshow(pool) {
    var els = document.querySelectorAll('[data-tsunagu-pool="' + pool + '"]');
    for (var i = 0; i < els.length; i++) {
      var el = els[i], was = originals.get(el);
      if (!was) continue;
      el.textContent = was.text;
      if (was.href === null) el.removeAttribute("href"); else el.setAttribute("href", was.href);
      el.removeAttribute("data-tsunagu-number");
    }
  }

  // When the lease of each pool's shown number runs out, by both of the page's clocks
  // from the answer's `expires_in` (counted from when it came, so a visitor's wrong
  // wall clock changes nothing): the monotonic one (performance.now) stands still
  // while the computer sleeps, the wall clock does not. `gen` tells a lease from the
  // ones that renewed it.
  var leases = {};

  function leaseOver(pool) {
    var l = leases[pool];
    return !!l && (performance.now() >= l.mono || Date.now() >= l.wall);
  }

  function leased(pool, left) {
    var gen = (leases[pool] ? leases[pool].gen : 0) + 1;
    leases[pool] = { gen: gen, mono: performance.now() + left, wall: Date.now() + left };
    // Unless renewed meanwhile, the page's own number comes back when the lease ends.
    setTimeout(function () {
      if (leases[pool] && leases[pool].gen === gen) expire(pool);
    }, left);
  }

  function expire(pool) {
    unshow(pool);
    delete leases[pool];
  }

  function issue(pool) {
    return fetch(api + "/v1/pools/" + encodeURIComponent(pool) + "/issue", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ params: params() }),
      credentials: "omit",
      keepalive: true
    }).then(function (r) {
      if (!r.ok) {
        var e = new Error("tsunagu issue: HTTP " + r.status);
        e.retryAfter = Number(r.headers.get("retry-after")) || 0;
        throw e;
      }
      return r.json();
    }).then(function (a) {
      show(pool, a.number);
      // Nothing to keep alive: an overflow number, or a one-time pool's (issuing
      // again would take another number, not extend this one).
      if (a.overflow || !a.expires_at || a.renewable === false) return;
      var left = typeof a.expires_in === "number"
        ? a.expires_in * 1000
        : Date.parse(a.expires_at) - Date.now();
      leased(pool, left);
      // Re-issue at half the remaining lease (15 s to 10 min) while the page is open.
      var wait = Math.min(Math.max(left / 2, 15000), 600000);
      setTimeout(function () { keepAlive(pool, 0); }, wait);
    });
  }

  function keepAlive(pool, failures) {
    if (document.visibilityState === "hidden") {
      document.addEventListener("visibilitychange", function again() {
        if (document.visibilityState === "visible") {
          document.removeEventListener("visibilitychange", again);
          keepAlive(pool, failures);
        }
      });
      return;
    }
    issue(pool).catch(function (e) {
      if (leaseOver(pool)) expire(pool);
      var backoff = Math.min(5000 * Math.pow(2, failures), 60000);
      var wait = Math.max(backoff, (e && e.retryAfter ? e.retryAfter : 0) * 1000);
      setTimeout(function () { keepAlive(pool, failures + 1); }, wait);
    });
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
