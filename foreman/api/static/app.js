"use strict";
// Foreman's dashboard: reads /summary, /jobs and the /events stream with the key the
// user gave (sessionStorage), draws tables and small SVG charts. No inline script.
const $ = (id) => document.getElementById(id);
let key = sessionStorage.getItem("foreman-key");
let refreshing = null;

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (key) headers.Authorization = "Bearer " + key;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    askKey();
    throw new Unauthorized(path);
  }
  return response;
}

function askKey() {
  $("overview").hidden = true;
  $("job").hidden = true;
  $("keyform").hidden = false;
  $("key").focus();
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (className) td.className = className;
  return td;
}

function jobLink(td, id) {
  td.textContent = "";
  const a = document.createElement("a");
  a.href = "#/jobs/" + id;
  a.textContent = id;
  td.append(a);
}

function fill(tbody, rows, draw) {
  tbody.replaceChildren();
  for (const item of rows) draw(tbody.insertRow(), item);
}

function chart(svg, values) {
  const width = 300, height = 80, max = Math.max(1, ...values);
  const step = width / values.length;
  svg.replaceChildren();
  values.forEach((value, i) => {
    const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    const h = (value / max) * (height - 4);
    rect.setAttribute("x", (i * step).toFixed(1));
    rect.setAttribute("y", (height - h).toFixed(1));
    rect.setAttribute("width", Math.max(1, step - 1).toFixed(1));
    rect.setAttribute("height", h.toFixed(1));
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    title.textContent = `${values.length - i} min ago: ${value}`;
    rect.append(title);
    svg.append(rect);
  });
}

async function refresh() {
  const summary = await (await api("/summary")).json();
  fill($("queue"), summary.queue, (row, q) => {
    for (const v of [q.model, q.priority, q.tenant, q.queued, q.running]) cell(row, v);
  });
  fill($("backends"), summary.backends, (row, b) => {
    for (const v of [b.name, b.state, b.loaded, b.running]) cell(row, v);
    cell(row, b.jobs.map((j) => `${j.id} ${j.model} ${j.elapsed ?? 0}s`).join(", "));
  });
  chart($("finished"), summary.hour.finished);
  chart($("swaps"), summary.hour.swaps);
  chart($("busy"), summary.hour.busy);
  const page = await (await api("/jobs?limit=20")).json();
  fill($("jobs"), page.jobs, (row, j) => {
    row.dataset.job = j.id;
    jobLink(cell(row, ""), j.id);
    cell(row, j.model);
    cell(row, j.state, j.state);
    cell(row, j.tenant);
    cell(row, j.created_at);
  });
  $("status").textContent = "updated " + summary.at;
}

function soon(work) {
  if (refreshing) return;
  refreshing = setTimeout(() => {
    refreshing = null;
    work().catch(report);
  }, 1000);
}

function report(error) {
  if (!(error instanceof Unauthorized)) $("status").textContent = String(error);
}

function onEvent(event) {
  const list = $("events");
  const item = document.createElement("li");
  item.textContent = `${event.seq} ${event.recorded_at} ${event.stream} ${event.type} ${event.summary}`;
  list.prepend(item);
  while (list.children.length > 50) list.lastChild.remove();
  soon(current);
}

async function follow() {
  for (;;) {
    try {
      const response = await api("/events");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = frame.split("\n").filter((l) => l.startsWith("data: "));
          if (data.length) onEvent(JSON.parse(data.map((l) => l.slice(6)).join("\n")));
        }
      }
    } catch (error) {
      if (error instanceof Unauthorized) return;
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
    soon(current);
  }
}

function said(type, data) {
  const parts = ["attempt", "backend", "reason", "error", "status", "tenant", "model"]
    .filter((name) => data[name] !== undefined && data[name] !== null)
    .map((name) => `${name}=${typeof data[name] === "object" ? JSON.stringify(data[name]) : data[name]}`);
  return `${type} ${parts.join(" ")}`;
}

async function showJob(id) {
  const answer = await api("/jobs/" + encodeURIComponent(id));
  $("job-id").textContent = id;
  if (!answer.ok) {
    $("job-state").textContent = (await answer.json()).error || answer.statusText;
    return;
  }
  const job = await answer.json();
  $("job-state").textContent = job.state;
  $("job-state").className = job.state;
  const fields = $("job-fields");
  fields.replaceChildren();
  for (const name of ["model", "kind", "priority", "tenant", "backend", "attempts", "created_at",
    "started_at", "finished_at", "queue_position"]) {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = name;
    dd.textContent = job[name] ?? "";
    fields.append(dt, dd);
  }
  const history = await (await api(`/jobs/${encodeURIComponent(id)}/events`)).json();
  $("timeline").replaceChildren(...history.events.map((e) => {
    const li = document.createElement("li");
    li.textContent = `${e.recorded_at} ${said(e.type, e.data)}`;
    return li;
  }));
  $("artifacts").replaceChildren(...job.artifacts.map((a) => {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = a.name;
    button.addEventListener("click", () => download(a).catch(report));
    li.append(button, ` ${a.media_type}, ${a.size} bytes`);
    return li;
  }));
  $("deliveries").replaceChildren(...(job.webhooks || []).map((d) => {
    const li = document.createElement("li");
    li.textContent = `${d.type} ${d.state} after ${d.attempts} tries${d.last_error ? ": " + d.last_error : ""}`;
    return li;
  }));
  // A key that can read the job may act on it: a tenant's own, or an admin's.
  $("cancel").hidden = ["succeeded", "failed", "cancelled"].includes(job.state);
  $("redeliver").hidden = !(job.webhooks || []).some((d) => d.state === "abandoned");
}

// Fetched with the key (a plain link could not send it), then saved from a blob.
async function download(artifact) {
  const id = encodeURIComponent(jobShown());
  const answer = await api(`/jobs/${id}/artifacts/${encodeURIComponent(artifact.name)}`);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await answer.blob());
  link.download = artifact.name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

function jobShown() {
  const match = location.hash.match(/^#\/jobs\/([0-9A-Z]+)$/);
  return match ? match[1] : null;
}

async function current() {
  const id = jobShown();
  $("keyform").hidden = true;
  $("overview").hidden = id !== null;
  $("job").hidden = id === null;
  return id === null ? refresh() : showJob(id);
}

async function act(method, suffix) {
  const id = jobShown();
  const options = { method };
  if (method === "POST") {
    options.headers = { "Content-Type": "application/json" };
    options.body = "{}";
  }
  const answer = await api(`/jobs/${encodeURIComponent(id)}${suffix}`, options);
  if (!answer.ok) $("status").textContent = (await answer.json()).error || answer.statusText;
  await showJob(id);
}

function start() {
  current().then(follow, report);
}

document.addEventListener("DOMContentLoaded", () => {
  $("keyform").addEventListener("submit", (event) => {
    event.preventDefault();
    key = $("key").value.trim();
    sessionStorage.setItem("foreman-key", key);
    start();
  });
  $("cancel").addEventListener("click", () => act("DELETE", "").catch(report));
  $("redeliver").addEventListener("click", () => act("POST", "/webhooks/redeliver").catch(report));
  window.addEventListener("hashchange", () => current().catch(report));
  start();
});
