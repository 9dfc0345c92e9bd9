// pyramid_scheduler's dashboard: fills the page shell from the JSON API and
// polls it. Every piece of data is written with textContent or as an
// attribute value, never as HTML. Rows are kept by a stable key and updated
// in place; while the pointer is over a table, no row is inserted, removed
// or moved: new rows wait behind a "N new - show" button.
(function () {
  "use strict";
  var body = document.body;
  var API = body.dataset.api, BASE = body.dataset.base, CSRF = body.dataset.csrf;
  var PAGE = body.dataset.page, JOB = body.dataset.job;
  var POLL_MS = 3000;
  var main = document.getElementById("main");
  var skew = 0; // the server's clock minus ours, in seconds
  var SVG = "http://www.w3.org/2000/svg";
  var STATUSES = ["scheduled", "running", "paused", "waiting", "done", "failed", "missed", "expired", "canceled", "interrupted", "parked"];

  function el(tag, attrs) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      var value = attrs[key];
      if (value === null || value === undefined) return;
      if (key === "text") node.textContent = String(value);
      else if (key === "on") Object.keys(value).forEach(function (ev) { node.addEventListener(ev, value[ev]); });
      else node.setAttribute(key, String(value));
    });
    for (var i = 2; i < arguments.length; i++) {
      var child = arguments[i];
      if (child === null || child === undefined) continue;
      node.appendChild(typeof child === "string" || typeof child === "number" ? document.createTextNode(String(child)) : child);
    }
    return node;
  }

  function now() { return Date.now() / 1000 + skew; }

  function span(seconds) {
    seconds = Math.abs(seconds);
    if (seconds < 1) return Math.round(seconds * 1000) + " ms";
    if (seconds < 60) return Math.round(seconds) + " s";
    if (seconds < 3600) return Math.round(seconds / 60) + " min";
    if (seconds < 172800) return Math.round(seconds / 3600) + " h";
    return Math.round(seconds / 86400) + " d";
  }

  function relative(at) {
    var delta = at - now();
    if (Math.abs(delta) < 1) return "now";
    return delta > 0 ? "in " + span(delta) : span(delta) + " ago";
  }

  function iso(at) { return new Date(at * 1000).toISOString(); }

  // A time: relative text, the absolute ISO time on hover; kept fresh by tick().
  function when(at) {
    if (at === null || at === undefined) return el("span", { "class": "none", text: "-" });
    return el("time", { datetime: iso(at), title: iso(at), "data-at": at, text: relative(at) });
  }

  function tick() {
    document.querySelectorAll("time[data-at]").forEach(function (node) {
      var text = relative(Number(node.dataset.at));
      if (node.textContent !== text) node.textContent = text;
    });
  }

  function took(run) {
    if (run.started_at === null || run.started_at === undefined) return "-";
    if (run.finished_at === null || run.finished_at === undefined) return "running";
    return span(run.finished_at - run.started_at);
  }

  function say(text, kind) {
    var message = document.getElementById("message");
    message.textContent = text;
    message.className = "message " + (kind || "ok");
    message.hidden = !text;
  }

  function call(path, post) {
    var options = { headers: { Accept: "application/json" }, credentials: "same-origin" };
    if (post) {
      options.method = "POST";
      options.headers["X-CSRF-Token"] = CSRF;
    }
    return fetch(API + path, options).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (!response.ok) throw new Error(data.error || response.status + " " + response.statusText);
        if (typeof data.now === "number") skew = data.now - Date.now() / 1000;
        return data;
      });
    });
  }

  function status(text) { return el("span", { "class": "status s-" + text, text: text }); }

  function section(title, id) {
    var box = el("section", { id: id }, el("h2", { text: title }));
    main.appendChild(box);
    return box;
  }

  // A table whose rows are kept by key. columns: [{title, cell: item -> node|string, cls}]
  function LiveTable(columns, keyOf, id) {
    var self = this;
    this.columns = columns;
    this.keyOf = keyOf;
    this.rows = new Map();
    this.pending = [];
    this.hovered = false;
    this.latest = [];
    this.table = el("table", { id: id, "class": "live-table" },
      el("thead", null, el("tr", null)), el("tbody"));
    columns.forEach(function (c) {
      self.table.tHead.rows[0].appendChild(el("th", { "class": c.cls, text: c.title }));
    });
    this.tbody = this.table.tBodies[0];
    this.empty = el("p", { "class": "empty", text: "Nothing here yet." });
    this.more = el("button", { type: "button", "class": "new-rows", on: { click: function () {
      self.hovered = false;
      self.update(self.latest);
    } } });
    // The button's place is kept (visibility, not display): showing it moves nothing.
    this.box = el("div", { "class": "table-box" }, this.more, this.table, this.empty);
    this.table.addEventListener("pointerenter", function () { self.hovered = true; });
    this.table.addEventListener("pointerleave", function () {
      self.hovered = false;
      self.update(self.latest);
    });
  }

  LiveTable.prototype.fill = function (tr, item) {
    var signature = JSON.stringify(item);
    if (tr.dataset.signature === signature) return;
    tr.dataset.signature = signature;
    this.columns.forEach(function (c, i) {
      var content = c.cell(item);
      var td = tr.cells[i];
      td.replaceChildren(typeof content === "string" ? document.createTextNode(content) : content);
      if (typeof content === "string") td.title = content;
    });
    if (item.status) tr.dataset.status = item.status;
  };

  LiveTable.prototype.update = function (items) {
    var self = this;
    this.latest = items;
    var keys = new Set();
    var fresh = [];
    items.forEach(function (item) {
      var key = self.keyOf(item);
      keys.add(key);
      var tr = self.rows.get(key);
      if (tr) self.fill(tr, item);
      else fresh.push(item);
    });
    if (this.hovered) {
      // Nothing moves under the pointer: new rows wait, gone rows are greyed.
      this.pending = fresh;
      this.rows.forEach(function (tr, key) { tr.classList.toggle("stale", !keys.has(key)); });
    } else {
      this.pending = [];
      fresh.forEach(function (item) {
        var tr = el("tr", { "data-key": self.keyOf(item) });
        self.columns.forEach(function (c) { tr.appendChild(el("td", { "class": c.cls })); });
        self.fill(tr, item);
        self.rows.set(self.keyOf(item), tr);
      });
      this.rows.forEach(function (tr, key) {
        if (!keys.has(key)) { tr.remove(); self.rows.delete(key); }
      });
      items.forEach(function (item, index) {
        var tr = self.rows.get(self.keyOf(item));
        if (self.tbody.rows[index] !== tr) self.tbody.insertBefore(tr, self.tbody.rows[index] || null);
      });
    }
    this.more.classList.toggle("shown", this.pending.length > 0);
    this.more.textContent = this.pending.length + " new \u2014 show";
    this.empty.hidden = this.rows.size > 0;
  };

  function poll(load) {
    var live = document.getElementById("live");
    function round() {
      load().then(function () { live.className = "live ok"; live.title = "updated " + new Date().toISOString(); },
        function (err) { live.className = "live down"; live.title = String(err.message || err); })
        .then(function () { setTimeout(round, POLL_MS); });
    }
    round();
  }

  function jobLink(id) { return el("a", { href: BASE + "/jobs/" + encodeURIComponent(id), text: id }); }

  function act(path, label) {
    return call(path, true).then(function (answer) {
      say(label + " sent to queue " + answer.queue + (answer.daemons ? "" : " (no live daemon serves it yet)"), "ok");
    }, function (err) { say(err.message, "error"); });
  }

  // ---- Overview
  function overview() {
    var queues = new LiveTable([
      { title: "Queue", cell: function (q) { return q.queue; } },
      { title: "Daemons", cls: "num", cell: function (q) { return String(q.daemons.length); } },
      { title: "Served by", cls: "wide", cell: function (q) {
        return q.daemons.length ? q.daemons.map(function (d) { return d.owner.split(":").slice(0, 2).join(":"); }).join(", ") : "no live daemon";
      } },
      { title: "Heartbeat", cell: function (q) {
        var beats = q.daemons.map(function (d) { return d.heartbeat_at; });
        return when(beats.length ? Math.max.apply(null, beats) : null);
      } },
      { title: "Lease", cell: function (q) { return q.owner ? q.owner.split(":").slice(0, 2).join(":") : "-"; } }
    ], function (q) { return q.queue; }, "queues");
    section("Queues and daemons", "queues-box").appendChild(queues.box);
    var counts = new LiveTable([{ title: "Queue", cell: function (r) { return r.queue; } }].concat(
      STATUSES.map(function (s) {
        return { title: s, cls: "num", cell: function (r) {
          var n = r[s] || 0;
          return n ? el("a", { href: BASE + "/jobs?status=" + s + "&queue=" + encodeURIComponent(r.queue), text: n }) : "0";
        } };
      })), function (r) { return r.queue; }, "counts");
    section("Jobs by status", "counts-box").appendChild(counts.box);
    var chartBox = section("Runs and lateness, last hour", "chart-box");
    var chart = document.createElementNS(SVG, "svg");
    chart.setAttribute("id", "chart");
    chart.setAttribute("viewBox", "0 0 600 180");
    chart.setAttribute("role", "img");
    chartBox.appendChild(chart);
    chartBox.appendChild(el("p", { "class": "legend" },
      el("span", { "class": "key done" }), "done ", el("span", { "class": "key failed" }), "failed ",
      el("span", { "class": "key other" }), "other ", el("span", { "class": "key late" }), "lateness (avg, right scale)"));
    poll(function () {
      return Promise.all([call("/daemons"), call("/stats")]).then(function (answers) {
        queues.update(answers[0].queues);
        var table = {};
        answers[1].jobs.forEach(function (row) {
          table[row.queue] = table[row.queue] || { queue: row.queue };
          table[row.queue][row.status] = row.count;
        });
        answers[0].queues.forEach(function (q) { table[q.queue] = table[q.queue] || { queue: q.queue }; });
        counts.update(Object.keys(table).sort().map(function (k) { return table[k]; }));
        draw(chart, answers[1].series);
      });
    });
  }

  function svg(tag, attrs, text) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, String(attrs[k])); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // Bars: runs a minute (stacked by outcome); line: average lateness.
  function draw(chart, series) {
    var W = 600, H = 180, L = 34, R = 44, T = 10, B = 22;
    var most = Math.max(1, Math.max.apply(null, series.map(function (b) { return b.done + b.failed + b.other; })));
    var late = Math.max(0.001, Math.max.apply(null, series.map(function (b) { return b.late_avg || 0; })));
    var step = (W - L - R) / series.length;
    chart.replaceChildren();
    chart.appendChild(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, "class": "axis" }));
    chart.appendChild(svg("text", { x: L - 4, y: T + 8, "class": "tick", "text-anchor": "end" }, String(most)));
    chart.appendChild(svg("text", { x: L - 4, y: H - B, "class": "tick", "text-anchor": "end" }, "0"));
    chart.appendChild(svg("text", { x: W - R + 4, y: T + 8, "class": "tick late" }, span(late)));
    chart.appendChild(svg("text", { x: L, y: H - 6, "class": "tick" }, "-60 min"));
    chart.appendChild(svg("text", { x: W - R, y: H - 6, "class": "tick", "text-anchor": "end" }, "now"));
    var points = [];
    series.forEach(function (b, i) {
      var y = H - B;
      ["done", "failed", "other"].forEach(function (key) {
        if (!b[key]) return;
        var h = (H - B - T) * b[key] / most;
        y -= h;
        var bar = svg("rect", { x: L + i * step + 1, y: y, width: Math.max(step - 2, 1), height: h, "class": "bar " + key });
        bar.appendChild(svg("title", {}, new Date(b.t * 1000).toISOString().slice(11, 16) + " UTC: " + b[key] + " " + key));
        chart.appendChild(bar);
      });
      if (b.late_avg !== null) points.push((L + (i + 0.5) * step).toFixed(1) + "," + (H - B - (H - B - T) * b.late_avg / late).toFixed(1));
    });
    if (points.length) chart.appendChild(svg("polyline", { points: points.join(" "), "class": "late-line" }));
  }

  // ---- Jobs
  function jobColumns() {
    return [
      { title: "Id", cls: "id", cell: function (j) { return jobLink(j.id); } },
      { title: "Function", cls: "wide", cell: function (j) { return j.func; } },
      { title: "Queue", cell: function (j) { return j.queue; } },
      { title: "Schedule", cell: function (j) { return j.schedule; } },
      { title: "Status", cell: function (j) { return status(j.status); } },
      { title: "Next run", cell: function (j) { return when(j.next_run_time); } },
      { title: "Last run", cell: function (j) { return when(j.last_run_at); } },
      { title: "Runs", cls: "num", cell: function (j) { return String(j.runs); } },
      { title: "Try", cls: "num", cell: function (j) { return j.retries ? j.attempt + "/" + (j.retries + 1) : String(j.attempt); } }
    ];
  }

  function jobs() {
    var params = new URLSearchParams(location.search);
    var form = el("form", { id: "filters", "class": "filters" });
    var statusSelect = el("select", { name: "status" }, el("option", { value: "", text: "any status" }));
    STATUSES.forEach(function (s) { statusSelect.appendChild(el("option", { value: s, text: s })); });
    var queueSelect = el("select", { name: "queue" }, el("option", { value: "", text: "any queue" }));
    form.append(
      el("label", null, "Status ", statusSelect),
      el("label", null, "Queue ", queueSelect),
      el("label", null, "Function ", el("input", { name: "func", placeholder: "module:name", maxlength: 200 })),
      el("label", null, "Job id ", el("input", { name: "search", type: "search", placeholder: "search by id", maxlength: 200 })),
      el("button", { type: "submit", text: "Filter" }));
    main.appendChild(form);
    var table = new LiveTable(jobColumns(), function (j) { return j.id; }, "jobs");
    main.appendChild(table.box);
    var pager = el("p", { "class": "pager" });
    var prev = el("button", { type: "button", id: "prev", text: "\u2190 Newer" });
    var next = el("button", { type: "button", id: "next", text: "Older \u2192" });
    var where = el("span", { id: "where" });
    pager.append(prev, where, next);
    main.appendChild(pager);
    var page = null;
    call("/daemons").then(function (answer) {
      answer.queues.forEach(function (q) { queueSelect.appendChild(el("option", { value: q.queue, text: q.queue })); });
      form.elements.queue.value = params.get("queue") || "";
    });
    ["status", "func", "search"].forEach(function (name) { form.elements[name].value = params.get(name) || ""; });
    function go(offset) {
      var query = new URLSearchParams();
      ["status", "queue", "func", "search"].forEach(function (name) {
        var value = form.elements[name].value;
        if (value) query.set(name, value);
      });
      if (offset) query.set("offset", offset);
      params = query;
      history.replaceState(null, "", location.pathname + (query.toString() ? "?" + query : ""));
      table.hovered = false;
      return load();
    }
    function load() {
      var query = new URLSearchParams(params);
      query.set("limit", "25");
      return call("/jobs?" + query).then(function (answer) {
        page = answer;
        table.update(answer.jobs);
        prev.disabled = answer.prev_offset === null;
        next.disabled = answer.next_offset === null;
        where.textContent = answer.jobs.length ? (answer.offset + 1) + "\u2013" + (answer.offset + answer.jobs.length) : "none";
      }, function (err) { say(err.message, "error"); throw err; });
    }
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      go(0);
    });
    prev.addEventListener("click", function () { go(page.prev_offset); });
    next.addEventListener("click", function () { go(page.next_offset); });
    poll(load);
  }

  // ---- One job
  var ACTIONS = [
    ["cancel", "Cancel", ["scheduled", "running", "paused", "waiting", "parked"]],
    ["pause", "Pause", ["scheduled", "running", "waiting"]],
    ["resume", "Resume", ["paused"]],
    ["run", "Run now", ["scheduled", "running", "waiting"]],
    ["retry", "Retry", ["failed", "interrupted", "parked"]]
  ];

  function job() {
    var path = "/jobs/" + encodeURIComponent(JOB);
    var actions = el("div", { id: "actions", "class": "actions" });
    ACTIONS.forEach(function (a) {
      var form = el("form", { method: "post", action: API + path + "/" + a[0], "data-action": a[0] },
        el("input", { type: "hidden", name: "csrf_token", value: CSRF }),
        el("button", { type: "submit", text: a[1] }));
      form.addEventListener("submit", function (event) {
        event.preventDefault();
        act(path + "/" + a[0], a[1]).then(refresh);
      });
      actions.appendChild(form);
    });
    main.appendChild(actions);
    var summary = el("dl", { id: "summary", "class": "summary" });
    section("Job", "summary-box").appendChild(summary);
    var request = el("pre", { id: "request" });
    section("Request", "request-box").appendChild(request);
    var fires = el("ol", { id: "fire-times" });
    section("Next fire times", "fires-box").appendChild(fires);
    var history = new LiveTable([
      { title: "Due", cell: function (r) { return when(r.scheduled_at); } },
      { title: "Status", cell: function (r) { return status(r.status); } },
      { title: "Started", cell: function (r) { return when(r.started_at); } },
      { title: "Took", cls: "num", cell: took },
      { title: "Late", cls: "num", cell: function (r) { return r.started_at === null ? "-" : span(Math.max(r.started_at - r.scheduled_at, 0)); } },
      { title: "Daemon", cell: function (r) { return (r.owner || "-").split(":").slice(0, 2).join(":"); } },
      { title: "Error", cls: "wide", cell: function (r) { var lines = (r.error || "").trim().split("\n"); return lines[lines.length - 1]; } }
    ], function (r) { return r.run_key; }, "runs");
    section("Run history (newest first)", "runs-box").appendChild(history.box);
    var result = el("pre", { id: "result" });
    section("Result", "result-box").appendChild(result);
    var error = el("pre", { id: "error", "class": "traceback" });
    var errorBox = section("Error", "error-box");
    errorBox.appendChild(error);
    function field(name, value) {
      summary.append(el("dt", { text: name }), el("dd", { "data-field": name }, value));
    }
    function refresh() {
      return call(path + "?runs=50").then(function (j) {
        summary.replaceChildren();
        field("status", status(j.status));
        if (j.status === "waiting" && j.waiting_reason) field("waiting", j.waiting_reason);
        field("function", j.func);
        field("queue", j.queue);
        field("schedule", j.schedule);
        field("created", when(j.created_at));
        field("updated", when(j.updated_at));
        field("last run", when(j.last_run_at));
        field("next run", when(j.next_run_time));
        field("runs", String(j.runs));
        field("attempt", j.retries ? j.attempt + " of " + (j.retries + 1) : String(j.attempt));
        body.dataset.status = j.status;
        actions.querySelectorAll("form").forEach(function (form) {
          var allowed = ACTIONS.filter(function (a) { return a[0] === form.dataset.action; })[0][2];
          form.querySelector("button").disabled = allowed.indexOf(j.status) < 0;
        });
        var text = JSON.stringify({ func: j.func, args: j.args, kwargs: j.kwargs, trigger: j.trigger }, null, 2);
        if (request.textContent !== text) request.textContent = text;
        fires.replaceChildren.apply(fires, j.next_fire_times.map(function (t) {
          return el("li", null, el("time", { datetime: t, title: t, "data-at": Date.parse(t) / 1000, text: relative(Date.parse(t) / 1000) }), " (" + t + ")");
        }));
        if (!j.next_fire_times.length) fires.appendChild(el("li", { "class": "none", text: "none" }));
        history.update(j.history.slice().reverse());
        text = j.result === null || j.result === undefined ? "(none)" : JSON.stringify(j.result, null, 2);
        if (result.textContent !== text) result.textContent = text;
        if (error.textContent !== (j.error || "(none)")) error.textContent = j.error || "(none)";
        errorBox.classList.toggle("has-error", Boolean(j.error));
      }, function (err) { say(err.message, "error"); throw err; });
    }
    poll(refresh);
  }

  // ---- Dead letters
  function deadLetters() {
    var table = new LiveTable([
      { title: "Id", cls: "num", cell: function (d) { return String(d.id); } },
      { title: "Received", cell: function (d) { return when(d.received_at); } },
      { title: "Queue", cell: function (d) { return d.queue; } },
      { title: "Size", cls: "num", cell: function (d) { return String(d.size); } },
      { title: "Reason", cls: "wide", cell: function (d) { return String(d.reason || ""); } },
      { title: "", cls: "buttons", cell: function (d) {
        var replay = el("button", { type: "button", "class": "replay", text: "Replay", on: { click: function () {
          // One that came unsigned may not come from this application: replayed only when confirmed.
          var force = d.signed === false;
          if (force && !window.confirm("Dead letter " + d.id + " did not carry a valid signature: replay it anyway?")) return;
          call("/dead-letters/" + d.id + "/replay" + (force ? "?force=1" : ""), true).then(function (answer) {
            say("dead letter " + d.id + " replayed as job " + answer.job_id, "ok");
          }, function (err) { say(err.message, "error"); });
        } } });
        if (!d.replayable) {
          replay.disabled = true;
          replay.title = "only part of this message was kept, or it was not a message: it cannot be replayed";
        }
        var remove = el("button", { type: "button", "class": "delete", text: "Delete", on: { click: function () {
          call("/dead-letters/" + d.id + "/delete", true).then(function () { say("dead letter " + d.id + " deleted", "ok"); },
            function (err) { say(err.message, "error"); });
        } } });
        return el("span", null, replay, " ", remove);
      } }
    ], function (d) { return String(d.id); }, "dead-letters");
    main.appendChild(el("p", { "class": "hint", text: "Messages the daemons refused, with why (newest first). The whole reason is on hover; the body is in the JSON API." }));
    main.appendChild(table.box);
    poll(function () {
      return call("/dead-letters?limit=200").then(function (answer) { table.update(answer.dead_letters.slice().reverse()); });
    });
  }

  document.querySelectorAll("nav a").forEach(function (a) {
    if (a.dataset.nav === PAGE || (PAGE === "job" && a.dataset.nav === "jobs")) a.setAttribute("aria-current", "page");
  });
  ({ overview: overview, jobs: jobs, job: job, "dead-letters": deadLetters })[PAGE]();
  setInterval(tick, 1000);
})();
