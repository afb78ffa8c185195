/* Partage portal: small progressive enhancement, no inline script (the CSP forbids it).
 * - auto-submit selects, confirm dialogs, copy buttons;
 * - the job page polls its live JSON endpoint: status, progress bar, ETA, loss chart, events. */
(function () {
  "use strict";
  document.documentElement.classList.add("js");
  var SVG = "http://www.w3.org/2000/svg";

  function onReady(fn) {
    if (document.readyState !== "loading") { fn(); } else { document.addEventListener("DOMContentLoaded", fn); }
  }

  function el(name, attrs, parent) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (parent) { parent.appendChild(node); }
    return node;
  }

  function formatDuration(seconds) {
    if (seconds === null || seconds === undefined || isNaN(seconds)) { return "—"; }
    var s = Math.max(0, Math.round(seconds));
    if (s < 60) { return s + " s"; }
    var m = Math.floor(s / 60); s = s % 60;
    if (m < 60) { return m + " min" + (s ? " " + s + " s" : ""); }
    var h = Math.floor(m / 60); m = m % 60;
    return h + " h" + (m ? " " + m + " min" : "");
  }

  function niceNumber(v) {
    if (Math.abs(v) >= 100) { return v.toFixed(0); }
    if (Math.abs(v) >= 10) { return v.toFixed(1); }
    return v.toFixed(2);
  }

  function thin(points, max) {
    if (points.length <= max) { return points; }
    var out = [], step = points.length / max;
    for (var i = 0; i < max; i++) { out.push(points[Math.floor(i * step)]); }
    out.push(points[points.length - 1]);
    return out;
  }

  /* A line chart of train (solid) and validation (dashed) loss against the step. */
  function drawLossChart(svg, train, valid) {
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    var W = 640, H = 260, L = 48, R = 14, T = 12, B = 30;
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.setAttribute("data-train-points", String(train.length));
    svg.setAttribute("data-valid-points", String(valid.length));
    var all = train.concat(valid);
    if (!all.length) {
      el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", "class": "empty-label" }, svg)
        .textContent = "The loss curve appears when training starts.";
      return;
    }
    var xs = all.map(function (p) { return p[0]; }), ys = all.map(function (p) { return p[1]; });
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    var y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
    if (x1 === x0) { x1 = x0 + 1; }
    var pad = (y1 - y0) * 0.08 || Math.max(Math.abs(y1) * 0.1, 0.1);
    y0 -= pad; y1 += pad;
    function X(v) { return L + (v - x0) / (x1 - x0) * (W - L - R); }
    function Y(v) { return T + (1 - (v - y0) / (y1 - y0)) * (H - T - B); }
    for (var i = 0; i <= 4; i++) {
      var yv = y0 + (y1 - y0) * i / 4, yy = Y(yv);
      el("line", { x1: L, x2: W - R, y1: yy, y2: yy, "class": "grid-line" }, svg);
      el("text", { x: L - 6, y: yy + 4, "text-anchor": "end", "class": "tick" }, svg).textContent = niceNumber(yv);
    }
    el("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, "class": "axis" }, svg);
    el("line", { x1: L, x2: L, y1: T, y2: H - B, "class": "axis" }, svg);
    [x0, Math.round((x0 + x1) / 2), x1].forEach(function (xv, k) {
      el("text", { x: X(xv), y: H - B + 18, "text-anchor": k === 0 ? "start" : (k === 2 ? "end" : "middle"), "class": "tick" }, svg)
        .textContent = "step " + Math.round(xv);
    });
    function line(points, cls) {
      var d = thin(points, 600).map(function (p) { return X(p[0]).toFixed(1) + "," + Y(p[1]).toFixed(1); }).join(" ");
      el("polyline", { points: d, "class": cls }, svg);
    }
    if (train.length) { line(train, "series-train"); }
    if (valid.length) {
      line(valid, "series-valid");
      valid.forEach(function (p) { el("circle", { cx: X(p[0]), cy: Y(p[1]), r: 3.5, "class": "dot-valid" }, svg); });
    }
  }

  function setText(id, text) {
    var node = document.getElementById(id);
    if (node) { node.textContent = text; }
  }

  function renderEvents(list, events) {
    if (!list) { return; }
    while (list.firstChild) { list.removeChild(list.firstChild); }
    events.forEach(function (e) {
      var li = document.createElement("li");
      var t = document.createElement("time");
      t.setAttribute("datetime", e.at);
      t.textContent = new Date(e.at).toLocaleTimeString();
      var m = document.createElement("span");
      m.className = "lvl-" + e.level;
      m.textContent = e.message;
      li.appendChild(t); li.appendChild(m); list.appendChild(li);
    });
  }

  var TONES = { succeeded: "ok", running: "run", queued: "wait", validating_files: "wait", paused: "wait", failed: "bad", cancelled: "muted" };

  function liveJob(root) {
    var url = root.getAttribute("data-live-url");
    var wasFinished = root.getAttribute("data-finished") === "true";
    var svg = document.getElementById("loss-chart");
    var bar = document.getElementById("job-progress");
    var train = [], valid = [], after = 0, delay = 1000;
    // The page's cursor in the outbox of domain events (what was announced before it rendered).
    var announcedAfter = root.getAttribute("data-announced-after") || "0";

    function apply(data) {
      train = train.concat(data.train); valid = valid.concat(data.valid); after = data.after;
      if (svg) { drawLossChart(svg, train, valid); }
      var badge = document.getElementById("job-status");
      if (badge) {
        badge.textContent = data.public_status.replace("_", " ");
        badge.className = "badge badge-" + (TONES[data.public_status] || "muted");
      }
      setText("job-internal-status", data.status);
      setText("job-status-message", data.status_message);
      var p = data.progress;
      if (bar && p.percent !== null) {
        bar.value = p.percent; bar.textContent = p.percent + "%";
        bar.setAttribute("aria-valuetext", p.percent + "% (step " + p.step + " of " + p.total_steps + ")");
      }
      setText("progress-percent", p.percent !== null ? p.percent + "%" : data.progress_label);
      if (p.step !== null && p.step !== undefined) { setText("progress-step", "step " + p.step + " / " + p.total_steps); }
      setText("progress-eta", data.finished ? "done" : (p.eta_s === null || p.eta_s === undefined ? "" : "ETA " + formatDuration(p.eta_s)));
      if (typeof p.train_loss === "number") { setText("progress-loss", p.train_loss.toFixed(4)); }
      if (data.valid.length) { setText("progress-valid-loss", data.valid[data.valid.length - 1][1].toFixed(4)); }
      renderEvents(document.getElementById("job-events"), data.events);
      var log = document.getElementById("live-log");
      if (log && data.log) {
        // Follow the end of the log, unless the reader scrolled up to read.
        var atEnd = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
        log.textContent = data.log;
        if (atEnd) { log.scrollTop = log.scrollHeight; }
      }
      root.setAttribute("data-status", data.status);
      return data.finished;
    }

    function poll() {
      fetch(url + "?after=" + after + "&announced_after=" + announcedAfter, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.json(); })
        .then(function (data) {
          var finished = apply(data);
          announcedAfter = data.announced_after;
          var checkpoint = data.announcements.some(function (a) {
            return a.type === "fine_tuning.job.checkpoint.created";
          });
          if ((finished && !wasFinished) || checkpoint) { window.location.reload(); return; }
          if (!finished) { delay = 1000; setTimeout(poll, delay); }
        })
        .catch(function () { delay = Math.min(delay * 2, 15000); setTimeout(poll, delay); });
    }
    poll();
  }

  // The job page's chat box: the form works without JavaScript (the page comes back with the
  // answer); with it, the answer streams in as OpenAI chat.completion.chunk events.
  function chatBox(form) {
    var block = document.getElementById("chat-answer-block");
    var answer = document.getElementById("chat-answer");
    var usage = document.getElementById("chat-usage");
    var button = form.querySelector("button[type=submit]");
    form.addEventListener("submit", function (ev) {
      if (!window.fetch || !window.TextDecoder || !window.ReadableStream) { return; }
      ev.preventDefault();
      block.hidden = false;
      answer.textContent = "";
      usage.textContent = "…";
      button.disabled = true;
      var buffer = "";
      function handle(event) {
        var data = event.replace(/^data: /, "");
        if (data === "[DONE]") { return; }
        var chunk = JSON.parse(data);
        if (chunk.error) { usage.textContent = chunk.error.message; return; }
        if (chunk.usage) {
          usage.textContent = chunk.usage.prompt_tokens + " prompt + " + chunk.usage.completion_tokens + " completion tokens";
        }
        (chunk.choices || []).forEach(function (c) {
          if (c.delta && c.delta.content) { answer.textContent += c.delta.content; }
        });
      }
      fetch(form.action, {
        method: "POST", body: new FormData(form), credentials: "same-origin",
        headers: { "Accept": "text/event-stream" }
      }).then(function (response) {
        if (!response.ok) {
          return response.json().then(function (body) {
            usage.textContent = (body.error && body.error.message) || ("Error " + response.status);
          });
        }
        var reader = response.body.getReader(), decoder = new TextDecoder();
        function pump() {
          return reader.read().then(function (part) {
            if (part.done) { return; }
            buffer += decoder.decode(part.value, { stream: true });
            var events = buffer.split("\n\n");
            buffer = events.pop();
            events.forEach(function (e) { if (e) { handle(e); } });
            return pump();
          });
        }
        return pump();
      }).catch(function () { usage.textContent = "The answer could not be fetched; try again."; })
        .then(function () { button.disabled = false; });
    });
  }

  onReady(function () {
    var chat = document.getElementById("chat-form");
    if (chat) { chatBox(chat); }
    document.querySelectorAll("[data-autosubmit]").forEach(function (node) {
      node.addEventListener("change", function () { node.form.submit(); });
    });
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (ev) {
        if (!window.confirm(form.getAttribute("data-confirm"))) { ev.preventDefault(); }
      });
    });
    document.querySelectorAll("[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        var target = document.getElementById(button.getAttribute("data-copy"));
        if (!target || !navigator.clipboard) { return; }
        navigator.clipboard.writeText(target.textContent.trim()).then(function () {
          var old = button.textContent; button.textContent = "Copied";
          setTimeout(function () { button.textContent = old; }, 1500);
        });
      });
    });
    var live = document.querySelector("[data-live-url]");
    if (live) { liveJob(live); }
  });
})();
