// The dashboard's only script: refresh the parts that changed, send the forms without a reload.
(function () {
  "use strict";
  var REFRESH_MS = 3000;
  var busy = false;
  var toastTimer = null;

  function toast(text, isError) {
    var el = document.getElementById("toast");
    if (!el || !text) return;
    el.textContent = text;
    el.className = "toast" + (isError ? " error" : "");
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () { el.hidden = true; }, isError ? 6000 : 3000);
  }

  function stale(on) {
    var el = document.getElementById("stale");
    if (el) el.hidden = !on;
  }

  function target(name) {
    var nodes = document.querySelectorAll('[data-part="' + name + '"]');
    for (var i = 0; i < nodes.length; i++) {
      if (nodes[i].tagName !== "TEMPLATE") return nodes[i];
    }
    return null;
  }

  function refresh() {
    if (busy) return Promise.resolve();
    busy = true;
    return fetch("/parts", { headers: { "X-Requested-With": "fetch" }, credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) { window.location.href = "/login"; return null; }
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.text();
      })
      .then(function (html) {
        if (html === null) return;
        stale(false);
        var doc = new DOMParser().parseFromString("<body>" + html + "</body>", "text/html");
        doc.querySelectorAll("[data-part]").forEach(function (src) {
          var dst = target(src.getAttribute("data-part"));
          if (!dst) return;
          var active = document.activeElement;
          // never clobber a field someone is typing in
          if (active && dst.contains(active) && active.tagName === "INPUT" && active.type !== "hidden") return;
          var next = src.innerHTML;
          if (dst.innerHTML !== next) dst.innerHTML = next;
          if (src.hasAttribute("class")) dst.className = src.className;
        });
      })
      .catch(function () { stale(true); })
      .then(function () { busy = false; });
  }

  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (!form.hasAttribute("data-async")) return;
    ev.preventDefault();
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) return;
    var button = form.querySelector("button");
    if (button) button.disabled = true;
    var body = new FormData(form);
    var why = document.getElementById("comment");     // the operator's reason, for the event
    if (why && why.value.trim()) body.append("comment", why.value.trim());
    fetch(form.action, {
      method: "POST", body: body, credentials: "same-origin",
      headers: { "X-Requested-With": "fetch", "X-CSRF-Token": document.querySelector('meta[name="csrf-token"]').content }
    })
      .then(function (r) {
        if (r.status === 401) { window.location.href = "/login"; return; }
        return r.json().then(function (body) { toast(body.message || body.error, !r.ok); },
                             function () { toast("HTTP " + r.status, !r.ok); });
      })
      .catch(function () { toast("the appliance does not answer", true); })
      .then(function () {
        if (document.activeElement && form.contains(document.activeElement)) document.activeElement.blur();
        busy = false;
        return refresh();
      });
  });

  setInterval(refresh, REFRESH_MS);
})();
