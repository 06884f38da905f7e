// inspectd supervisor: live updates over server-sent events. The server renders (and escapes)
// every row; this script only places them. `data-pushed` on <body> counts updates applied.
(function () {
  "use strict";
  var body = document.body;
  var pushed = 0;
  var MAX_ROWS = 200;
  // Absolute times arrive as <time datetime="…Z">; they are shown in this browser's zone, named
  // ("2026-11-30 13:31:02 GMT+5:30"), with the UTC time as the tooltip.
  var fmt = null;
  try {
    fmt = new Intl.DateTimeFormat("en-US", { year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23", timeZoneName: "short" });
  } catch (e) { fmt = null; }
  function localTime(d) {
    var p = {};
    fmt.formatToParts(d).forEach(function (x) { p[x.type] = x.value; });
    return p.year + "-" + p.month + "-" + p.day + " " + p.hour + ":" + p.minute + ":" + p.second +
      " " + p.timeZoneName;
  }
  function localize(root) {
    if (!fmt) { return; }
    var ts = (root || document).querySelectorAll("time[datetime]:not([data-local])");
    for (var i = 0; i < ts.length; i++) {
      var d = new Date(ts[i].getAttribute("datetime"));
      if (isNaN(d.getTime())) { continue; }
      ts[i].title = ts[i].getAttribute("datetime");
      ts[i].textContent = localTime(d);
      ts[i].setAttribute("data-local", "");
    }
  }
  localize(document);
  function applied() { localize(document); pushed += 1; body.setAttribute("data-pushed", String(pushed)); }
  function prepend(id, html, keep) {
    var t = document.getElementById(id);
    if (!t) { return false; }
    var empty = t.querySelector("td.empty");
    if (empty) { empty.parentNode.remove(); }
    t.insertAdjacentHTML("afterbegin", html);
    while (t.rows.length > keep) { t.deleteRow(t.rows.length - 1); }
    applied();
    return true;
  }
  // Refetch a server-rendered fragment, at most once per second per element.
  var busy = {};
  function refresh(id) {
    var t = document.getElementById(id);
    if (!t || busy[id]) { return; }
    busy[id] = true;
    setTimeout(function () {
      // A fetch that hangs must not block every later refresh.
      var ctl = new AbortController();
      var timer = setTimeout(function () { ctl.abort(); }, 5000);
      fetch(t.getAttribute("data-src"), { cache: "no-store", signal: ctl.signal })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
        .then(function (html) { t.innerHTML = html; applied(); })
        .catch(function () {})
        .then(function () { clearTimeout(timer); busy[id] = false; });
    }, 250);
  }
  // The stream starts where the page's rows end (`data-cursor`); a reconnecting browser sends the
  // id of the last row it got, and the server sends what was stored in between.
  var cur = document.querySelector("[data-cursor]");
  var es = new EventSource("/events" +
    (cur ? "?after=" + encodeURIComponent(cur.getAttribute("data-cursor")) : ""));
  var dot = document.getElementById("conn");
  var banner = document.getElementById("link-banner");
  // The dot: green when this page hears the supervisor and the supervisor hears the broker;
  // amber when only the first; grey when the page has lost the supervisor.
  var streamUp = false, broker = null;
  function showLink() {
    if (!dot) { return; }
    if (!streamUp) {
      dot.className = "conn";
      dot.title = "live updates: this page lost the supervisor";
    } else if (broker && !broker.up) {
      dot.className = "conn half";
      dot.title = "live updates: the supervisor lost the broker since " + broker.since;
    } else {
      dot.className = "conn up";
      dot.title = "live updates: connected";
    }
  }
  // Whatever changed between rendering the page and (re)connecting the stream is fetched once.
  es.onopen = function () {
    streamUp = true;
    showLink();
    refresh("fleet");
    refresh("commands");
  };
  es.onerror = function () { streamUp = false; showLink(); };
  es.addEventListener("link", function (e) {
    broker = JSON.parse(e.data);
    streamUp = true;
    showLink();
    if (banner) {
      if (broker.up) {
        banner.hidden = true;
        banner.textContent = "";
      } else {
        var since = new Date(broker.since);
        banner.textContent = "supervisor lost the broker since " +
          (fmt && !isNaN(since.getTime()) ? localTime(since) : broker.since) +
          ": what this page shows may be out of date, and device states are unknown.";
        banner.hidden = false;
      }
    }
    refresh("fleet");
  });
  es.addEventListener("verdict", function (e) {
    var t = document.getElementById("live");
    if (!t) { return; }
    var only = t.closest("table").getAttribute("data-device");
    var tmp = document.createElement("tbody");
    tmp.innerHTML = e.data;
    var row = tmp.rows[0];
    if (!row || (only && row.getAttribute("data-device") !== only)) { return; }
    for (var i = 0; i < t.rows.length; i++) {
      var r = t.rows[i];
      if (r.getAttribute("data-device") === row.getAttribute("data-device") &&
          r.getAttribute("data-seq") === row.getAttribute("data-seq")) { return; }
    }
    prepend("live", e.data, MAX_ROWS);
  });
  es.addEventListener("evidence", function (e) {
    var key = JSON.parse(e.data).key;
    var imgs = document.querySelectorAll("img[data-key]");
    for (var i = 0; i < imgs.length; i++) {
      if (imgs[i].getAttribute("data-key") === key) {
        imgs[i].src = imgs[i].getAttribute("data-src") + "?v=" + Date.now();
      }
    }
  });
  es.addEventListener("alert", function (e) {
    // The alerts page groups repeats: its rows are refetched rather than prepended.
    var t = document.getElementById("alerts");
    if (t && t.getAttribute("data-src")) { refresh("alerts"); } else { prepend("alerts", e.data, 1000); }
    var c = document.getElementById("alert-count");
    if (c) { c.textContent = String(Number(c.textContent) + 1); c.className = "count hot"; }
  });
  // A page being left gives its stream back (browsers allow six connections per host).
  window.addEventListener("pagehide", function () { es.close(); });
  es.addEventListener("fleet", function () { refresh("fleet"); });
  // The fleet also refreshes by itself: online turns stale by time alone.
  if (document.getElementById("fleet")) { setInterval(function () { refresh("fleet"); }, 2000); }
  es.addEventListener("cmd_result", function () { refresh("commands"); });
})();
