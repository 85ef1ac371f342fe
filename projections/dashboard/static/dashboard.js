// Live updates for the dashboard's pages, without a build step or a framework.
//
// The page tells which projection state it was rendered at (data-position, data-version,
// data-rejected on <body>). A server-sent event stream reports every later change and which
// updates it touched; when it concerns this page, the page fetches its own URL again and
// swaps the regions marked data-live-region in place (no reload, scroll position kept,
// open <details> kept open). Content comes escaped from the server's templates.
(function () {
  "use strict";

  var body = document.body;
  var view = body.dataset.view;
  var updateId = body.dataset.update;
  var indicator = document.getElementById("live-indicator");
  var refreshing = false;
  var again = false;

  function setIndicator(state, text) {
    if (!indicator) { return; }
    indicator.className = "live " + state;
    indicator.textContent = text;
  }

  function concernsThisPage(change) {
    if (view === "update") {
      return change.updates === null || change.updates.indexOf(updateId) !== -1;
    }
    if (view === "rejected") {
      return change.updates === null || change.rejected !== Number(body.dataset.rejected);
    }
    return true;
  }

  function swapRegions(doc) {
    var regions = document.querySelectorAll("[data-live-region][id]");
    for (var i = 0; i < regions.length; i++) {
      var current = regions[i];
      var fresh = doc.getElementById(current.id);
      if (!fresh) { continue; }
      var open = {};
      var details = current.querySelectorAll("details[open][id]");
      for (var j = 0; j < details.length; j++) { open[details[j].id] = true; }
      var nodes = [];
      while (fresh.firstChild) { nodes.push(document.adoptNode(fresh.firstChild)); }
      current.replaceChildren.apply(current, nodes);
      current.className = fresh.className;
      Object.keys(open).forEach(function (id) {
        var d = document.getElementById(id);
        if (d) { d.open = true; }
      });
    }
  }

  function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = true;
    fetch(window.location.href, { headers: { "Accept": "text/html" }, cache: "no-store", credentials: "same-origin" })
      .then(function (response) { return response.text(); })
      .then(function (html) {
        swapRegions(new DOMParser().parseFromString(html, "text/html"));
        body.dataset.refreshes = String(Number(body.dataset.refreshes || "0") + 1);
      })
      .catch(function () { setIndicator("off", "live: refresh failed"); })
      .then(function () {
        refreshing = false;
        if (again) { again = false; refresh(); }
      });
  }

  function connect() {
    var params = new URLSearchParams({
      position: body.dataset.position,
      version: body.dataset.version,
      rejected: body.dataset.rejected
    });
    var source = new EventSource("/api/stream?" + params.toString());
    source.addEventListener("open", function () { setIndicator("on", "live"); });
    source.addEventListener("error", function () { setIndicator("off", "live: reconnecting…"); });
    source.addEventListener("change", function (event) {
      var change = JSON.parse(event.data);
      var relevant = concernsThisPage(change);
      body.dataset.position = String(change.position);
      body.dataset.version = String(change.version);
      body.dataset.rejected = String(change.rejected);
      if (relevant) { refresh(); }
    });
  }

  // "running for 3 min 10 s" counts on between refreshes (the server rendered it at page time;
  // the same wording as projections.dashboard.charts.duration).
  function duration(seconds) {
    var s = Math.max(0, Math.round(seconds));
    if (s < 60) { return s + " s"; }
    var m = Math.floor(s / 60); s = s % 60;
    if (m < 60) { return s ? m + " min " + s + " s" : m + " min"; }
    var h = Math.floor(m / 60); m = m % 60;
    if (h < 24) { return m ? h + " h " + m + " min" : h + " h"; }
    var d = Math.floor(h / 24); h = h % 24;
    return h ? d + " d " + h + " h" : d + " d";
  }

  function tick() {
    var clocks = document.querySelectorAll("time.running-for[data-since]");
    for (var i = 0; i < clocks.length; i++) {
      var since = Date.parse(clocks[i].dataset.since);
      if (!isNaN(since)) { clocks[i].textContent = duration((Date.now() - since) / 1000); }
    }
  }

  if (window.EventSource && window.fetch && window.DOMParser) {
    connect();
  }
  window.setInterval(tick, 1000);
}());
