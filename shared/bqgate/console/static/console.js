// bqgate approver console: live inbox (polling) and expiry countdowns. No inline script:
// the Content-Security-Policy allows only this file.
(function () {
  "use strict";
  var offset = 0; // server clock minus this browser's clock, in ms

  function syncClock(el) {
    var server = el && Number(el.getAttribute("data-server-now-ms"));
    if (server) { offset = server - Date.now(); }
  }

  function describeLeft(ms) {
    if (ms <= 0) { return "expired"; }
    var s = Math.floor(ms / 1000), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    if (h) { return h + " h " + m + " min left"; }
    if (m) { return m + " min " + (s % 60) + " s left"; }
    return s + " s left";
  }

  function tick() {
    var now = Date.now() + offset;
    document.querySelectorAll("[data-expires-at-ms]").forEach(function (el) {
      var at = Number(el.getAttribute("data-expires-at-ms"));
      if (at) { el.textContent = describeLeft(at - now); }
    });
  }

  function items(root) {
    var out = {};
    root.querySelectorAll("li.request[data-job-id]").forEach(function (li) {
      out[li.getAttribute("data-job-id")] = li;
    });
    return out;
  }

  function markGone(li) {
    if (li.classList.contains("gone")) { return false; }
    li.classList.add("gone");
    li.querySelectorAll("button, textarea").forEach(function (el) { el.disabled = true; });
    var note = document.createElement("p");
    note.className = "gone-note";
    note.textContent = "No longer pending: decided elsewhere or expired (see History).";
    var header = li.querySelector("header");
    if (header) { header.appendChild(note); }
    return true;
  }

  function merge(list, fresh, status) {
    var now = items(list), next = items(fresh), order = [];
    fresh.querySelectorAll("li.request[data-job-id]").forEach(function (li) {
      order.push(li.getAttribute("data-job-id"));
    });
    var added = 0, gone = 0;
    Object.keys(now).forEach(function (id) {
      if (!next[id] && markGone(now[id])) { gone += 1; }
    });
    order.forEach(function (id, i) {
      if (now[id]) {
        var votes = now[id].querySelector(".votes"), fresher = next[id].querySelector(".votes");
        if (votes && fresher && votes.textContent !== fresher.textContent) {
          votes.textContent = fresher.textContent;
        }
        return;
      }
      var node = document.importNode(next[id], true), before = null;
      for (var j = i + 1; j < order.length && !before; j += 1) { before = now[order[j]] || null; }
      list.insertBefore(node, before);
      now[id] = node;
      added += 1;
    });
    var pending = list.querySelectorAll("li.request:not(.gone)").length;
    var count = document.getElementById("inbox-count");
    if (count) {
      count.textContent = String(pending);
      count.setAttribute("aria-label", pending + " pending");
    }
    var empty = document.getElementById("inbox-empty");
    if (empty) { empty.classList.toggle("hidden", pending > 0); }
    var said = [];
    if (added) { said.push(added + " new request" + (added === 1 ? "" : "s")); }
    if (gone) { said.push(gone + " request" + (gone === 1 ? " is" : "s are") + " no longer pending"); }
    if (said.length) { status.textContent = said.join("; ") + "."; }
  }

  function startPolling(box) {
    var url = box.getAttribute("data-poll-url"), every = Number(box.getAttribute("data-poll-ms")) || 5000;
    var status = document.getElementById("live-status"), timer = null;
    function poll() {
      fetch(url, { credentials: "same-origin", cache: "no-store", headers: { Accept: "text/html" } })
        .then(function (resp) {
          if (resp.status === 401 || resp.status === 403) {
            status.textContent = "Your console session has ended: reload the page to sign in again.";
            window.clearInterval(timer);
            return null;
          }
          if (!resp.ok) { throw new Error("HTTP " + resp.status); }
          return resp.text();
        })
        .then(function (html) {
          if (html === null) { return; }
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.getElementById("inbox-list"), list = document.getElementById("inbox-list");
          if (!fresh || !list) { return; }
          syncClock(fresh);
          merge(list, fresh, status);
          tick();
        })
        .catch(function () { status.textContent = "Cannot reach the console right now; retrying."; });
    }
    timer = window.setInterval(poll, every);
  }

  document.addEventListener("DOMContentLoaded", function () {
    syncClock(document.body);
    tick();
    window.setInterval(tick, 1000);
    var box = document.getElementById("inbox");
    if (box && window.fetch && window.DOMParser) { startPolling(box); }
  });
})();
