// Live refresh of the jobs page: figures and the first page of the list every two
// seconds (a later page, with its cursor, stays as it was loaded); a job's page reloads
// when its status changes. Text goes in with textContent: nothing from a job is HTML.
(function () {
  "use strict";
  var EVERY_MS = 2000;
  var page = document.body.dataset.page;

  function age(seconds) {
    seconds = Math.max(0, seconds);
    if (seconds < 120) return seconds.toFixed(0) + "s";
    if (seconds < 7200) return (seconds / 60).toFixed(0) + "m";
    if (seconds < 172800) return (seconds / 3600).toFixed(1) + "h";
    return (seconds / 86400).toFixed(1) + "d";
  }

  function getJson(url) {
    return fetch(url, { credentials: "same-origin", cache: "no-store" }).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    });
  }

  function setFigures(figures) {
    Object.keys(figures).forEach(function (name) {
      var element = document.getElementById("figure-" + name);
      if (!element) return;
      var value = figures[name];
      element.dataset.value = String(value);
      element.textContent = name === "oldest_waiting_seconds" ? age(value) : String(value);
    });
  }

  function cell(text, className) {
    var td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function renderRows(rows) {
    var body = document.getElementById("job-rows");
    var fresh = document.createDocumentFragment();
    rows.forEach(function (row) {
      var tr = document.createElement("tr");
      tr.dataset.jobId = row.job_id;
      var id = cell("", "id");
      var link = document.createElement("a");
      link.href = "/jobs/" + encodeURIComponent(row.job_id);
      link.textContent = row.job_id;
      id.appendChild(link);
      tr.appendChild(id);
      tr.appendChild(cell(row.status, "status status-" + row.status));
      [row.model, row.tenant, row.age, String(row.polls), row.cost].forEach(function (text) {
        tr.appendChild(cell(text));
      });
      tr.appendChild(cell(row.error, "error"));
      fresh.appendChild(tr);
    });
    body.replaceChildren(fresh);
    var none = document.getElementById("no-jobs");
    if (none) none.hidden = rows.length > 0;
  }

  function refreshList() {
    var params = new URLSearchParams(window.location.search);
    var figures = getJson("/jobs/api/summary").then(setFigures);
    if (params.get("cursor")) return figures;
    return Promise.all([
      figures,
      getJson("/jobs/api/jobs?" + params.toString()).then(function (data) {
        renderRows(data.jobs);
      }),
    ]);
  }

  function refreshJob() {
    var id = document.body.dataset.jobId;
    return getJson("/jobs/api/job/" + encodeURIComponent(id)).then(function (job) {
      if (job.status !== document.body.dataset.status) {
        window.location.reload(); // new buttons, images and error: draw it all again
        return;
      }
      document.getElementById("job-polls").textContent = String(job.polls);
      var list = document.getElementById("timeline");
      var fresh = document.createDocumentFragment();
      job.timeline.forEach(function (event) {
        var li = document.createElement("li");
        var at = document.createElement("span");
        at.className = "at";
        at.textContent = "+" + event.at.toFixed(1) + "s";
        li.appendChild(at);
        li.appendChild(document.createTextNode(" " + event.what));
        fresh.appendChild(li);
      });
      list.replaceChildren(fresh);
    });
  }

  function tick() {
    var work = page === "job" ? refreshJob() : refreshList();
    var stamp = document.getElementById("refreshed");
    work
      .then(function () {
        stamp.textContent = "live, updated " + new Date().toLocaleTimeString();
      })
      .catch(function (error) {
        stamp.textContent = "refresh failed (" + error.message + "), retrying";
      })
      .then(function () {
        window.setTimeout(tick, EVERY_MS);
      });
  }

  window.setTimeout(tick, EVERY_MS);
})();
