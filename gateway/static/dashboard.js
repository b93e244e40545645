// Conveyor dashboard: submit jobs and watch the tenant's jobs live.
//
// The table is loaded once from GET /v1/jobs, then kept current by the firehose
// (EventSource on that response's `links.events`, which carries a token because EventSource
// cannot send an Authorization header). EventSource reconnects by itself after a network
// error, resuming with Last-Event-ID; when the server refuses it outright (a 401 once the
// token expired, or a gateway restarted with a new token secret) it gives up, so we fetch
// the list again, which also brings a fresh token.
"use strict";

const KEY_STORAGE = "conveyor.apiKey";
const PAGE_SIZE = 50;
// The firehose is opened a little before the list was read (by the server's clock), so an
// event that landed between the two is replayed rather than missed; duplicates are dropped
// by comparing stream ids per job.
const REPLAY_MARGIN_MS = 2000;
const RECONNECT_MAX_MS = 30000;
const EVENT_TYPES = [
  "job.scheduled", "job.queued", "job.started", "job.progress", "job.retrying",
  "job.reclaimed", "job.cancel_requested", "job.succeeded", "job.failed", "job.cancelled",
  "job.step", "job.waiting", "job.child_ended",
];
// Events whose data does not carry everything the table shows (error, result, artifacts):
// after one of these the job's snapshot is read again.
const REFETCH_AFTER = new Set([
  "job.retrying", "job.reclaimed", "job.succeeded", "job.failed", "job.cancelled",
  "job.child_ended",
]);
const CANCELLABLE = new Set(["scheduled", "waiting", "queued", "running"]);
const RETRYABLE = new Set(["failed", "cancelled"]);
// What a payload skeleton holds for a required field with neither an example nor a default.
const PLACEHOLDERS = { string: "", number: 0, integer: 0, boolean: false, array: [], object: {} };

const jobs = new Map();
const payloadSchemas = new Map(); // job type -> its payload's JSON Schema, from GET /v1/job-types
const flowControl = new Map(); // job type -> its rate limit and cap, from GET /v1/job-types
let apiKey = "";
let source = null;
let nextCursor = null;
let reconnectTimer = null;
let reconnectDelay = 1000;

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function request(method, path, body) {
  const init = { method, headers: { Authorization: `Bearer ${apiKey}` } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    throw new ApiError(response.status, (data && data.message) || `HTTP ${response.status}`);
  }
  return { data, response };
}

const api = async (method, path, body) => (await request(method, path, body)).data;
const jobPath = (id) => `/v1/jobs/${encodeURIComponent(id)}`;

// Stream ids are "<ms>-<seq>"; both parts fit a double exactly.
function compareIds(a, b) {
  const [am, as] = a.split("-").map(Number);
  const [bm, bs] = b.split("-").map(Number);
  return am - bm || as - bs;
}

function setConnection(text, state) {
  const el = $("connection");
  el.textContent = text;
  el.dataset.state = state;
}

function setSubmitStatus(text, state = "ok") {
  const el = $("submit-status");
  el.textContent = text;
  el.dataset.state = state;
}

// --- the table -----------------------------------------------------------------------------

function upsert(job) {
  const known = jobs.get(job.id);
  // A snapshot read before an event we already applied is older than what we show.
  if (known && known.last_event_id && job.last_event_id
      && compareIds(job.last_event_id, known.last_event_id) < 0) {
    return;
  }
  jobs.set(job.id, job);
  renderRow(job);
}

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function formatBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function cells(job) {
  const shortId = job.id.slice(-8);
  const created = job.created_at ? new Date(job.created_at).toLocaleString() : "";
  const idCell = el("td", {}, el("code", { title: `${job.id}\ncreated ${created}` }, shortId));

  const badge = el("span", { className: `status status-${job.status}` }, job.status);
  const statusNotes = [];
  if (job.cancel_requested && !RETRYABLE.has(job.status) && job.status !== "succeeded") {
    statusNotes.push("cancel requested");
  }
  if (job.attempt > 1) statusNotes.push(`attempt ${job.attempt}`);
  if (job.priority !== undefined && job.priority !== 5) statusNotes.push(`priority ${job.priority}`);
  // A job held back by its type's rate limit or cap says so while it waits.
  if (job.status === "queued" && job.message) statusNotes.push(job.message);
  const statusCell = el("td", {}, badge,
    statusNotes.length ? el("div", { className: "note" }, statusNotes.join(", ")) : null);

  const percent = Math.max(0, Math.min(100, Number(job.progress) || 0));
  const bar = el("progress", { max: 100, value: percent });
  bar.setAttribute("aria-label", `Progress of job ${shortId}`);
  const progressCell = el("td", {}, el("div", { className: "progress" },
    bar, el("span", {}, `${Math.round(percent)}%`)));

  const artifacts = el("td");
  for (const artifact of job.artifacts || []) {
    const open = el("button", {
      type: "button",
      className: "link",
      title: `${artifact.content_type}, ${formatBytes(artifact.size)}`,
      onclick: () => openArtifact(job.id, artifact.name),
    }, artifact.name);
    artifacts.append(el("div", {}, open));
  }

  const actions = el("td", { className: "actions" });
  if (CANCELLABLE.has(job.status)) {
    const cancel = el("button", {
      type: "button", className: "secondary", disabled: job.cancel_requested,
      onclick: () => act(job.id, "cancel"),
    }, "Cancel");
    cancel.setAttribute("aria-label", `Cancel job ${shortId}`);
    actions.append(cancel);
  }
  if (RETRYABLE.has(job.status)) {
    const retry = el("button", {
      type: "button", className: "secondary", onclick: () => act(job.id, "retry"),
    }, "Retry");
    retry.setAttribute("aria-label", `Retry job ${shortId}`);
    actions.append(retry);
  }

  return [
    idCell,
    el("td", {}, job.type),
    statusCell,
    stageCell(job),
    progressCell,
    el("td", { className: "error" }, job.error || ""),
    artifacts,
    actions,
  ];
}

// The stage, which is the current step's name while a step runs; for a multi-step job, how
// many of its steps are done; for a parent, how its children stand.
function stageCell(job) {
  const notes = [];
  const steps = job.steps || [];
  if (steps.length) {
    const done = steps.filter((s) => s.state === "succeeded").length;
    notes.push(`step ${done}/${steps.length} done`);
  }
  const children = job.children;
  if (children) {
    const ended = children.total - children.pending;
    let text = `${ended}/${children.total} children ended`;
    if (children.failed) text += `, ${children.failed} failed`;
    notes.push(text);
  }
  return el("td", {}, job.stage || "—",
    notes.length ? el("div", { className: "note" }, notes.join("; ")) : null);
}

function renderRow(job) {
  const tbody = $("jobs").tBodies[0];
  let row = tbody.querySelector(`tr[data-job-id="${CSS.escape(job.id)}"]`);
  if (row) {
    // The progress bar is updated in place, not replaced, so it animates and observers of
    // its `value` see one element change.
    const bar = row.querySelector("progress");
    const fresh = cells(job);
    const freshBar = fresh[4].querySelector("progress");
    bar.value = freshBar.value;
    fresh[4].querySelector(".progress").replaceChild(bar, freshBar);
    row.replaceChildren(...fresh);
  } else {
    row = el("tr", {}, ...cells(job));
    row.dataset.jobId = job.id;
    const after = [...tbody.rows].find((r) => precedes(job, jobs.get(r.dataset.jobId)));
    tbody.insertBefore(row, after || null);
  }
  row.dataset.status = job.status;
  row.dataset.type = job.type;
  $("jobs-empty").hidden = jobs.size > 0;
}

// Newest first, like GET /v1/jobs.
function precedes(a, b) {
  return !b || a.created_at > b.created_at || (a.created_at === b.created_at && a.id > b.id);
}

// --- events --------------------------------------------------------------------------------

function onEvent(message) {
  const event = JSON.parse(message.data);
  const job = jobs.get(event.job_id);
  if (!job) {
    refreshJob(event.job_id); // a job submitted elsewhere, or older than the first page
    return;
  }
  if (job.last_event_id && compareIds(event.id, job.last_event_id) <= 0) return;
  const data = event.data || {};
  job.status = event.status;
  job.attempt = event.attempt;
  job.last_event_id = event.id;
  if (typeof data.progress === "number") job.progress = data.progress;
  if (data.stage !== undefined) job.stage = data.stage;
  if (data.message !== undefined) job.message = data.message;
  if (event.event === "job.step") {
    if (data.state === "started") job.stage = data.step;
    const steps = (job.steps || []).filter((s) => s.name !== data.step);
    job.steps = [...steps, { name: data.step, state: data.state === "restored" ? "succeeded" : data.state }];
  }
  if (event.event === "job.cancel_requested") job.cancel_requested = true;
  // A job queued or started again (a retry) starts afresh, as its hash does; this event may
  // arrive before the retry's own response, which is then older than what we show.
  if (event.event === "job.queued" || event.event === "job.started") {
    job.cancel_requested = false;
    job.error = null;
  }
  // Each attempt's progress is its own: the hash starts a new attempt (a retry, or another
  // consumer's reclaim) at 0 with no stage, and so does the page.
  if (event.event === "job.started" || event.event === "job.reclaimed") {
    Object.assign(job, { progress: 0, stage: null, message: null });
  }
  if (data.manual_retry) Object.assign(job, { progress: 0, stage: null, message: null, result: null });
  renderRow(job);
  if (REFETCH_AFTER.has(event.event)) refreshJob(job.id);
}

async function refreshJob(id) {
  try {
    upsert(await api("GET", jobPath(id)));
  } catch (err) {
    if (err.status !== 404) console.warn(`cannot read job ${id}: ${err.message}`);
  }
}

function scheduleReconnect() {
  clearTimeout(reconnectTimer);
  reconnectTimer = setTimeout(connect, reconnectDelay);
  reconnectDelay = Math.min(reconnectDelay * 2, RECONNECT_MAX_MS);
}

async function connect() {
  clearTimeout(reconnectTimer);
  if (source) {
    source.close();
    source = null;
  }
  if (!apiKey) {
    setConnection("Enter an API key", "idle");
    return;
  }
  setConnection("Connecting…", "busy");
  let page;
  let serverNow;
  try {
    const [{ data, response }, types] = await Promise.all([
      request("GET", `/v1/jobs?limit=${PAGE_SIZE}`),
      api("GET", "/v1/job-types"),
    ]);
    page = data;
    serverNow = Date.parse(response.headers.get("Date") || "") || Date.now();
    fillJobTypes(types);
    loadSchedules();
  } catch (err) {
    if (err.status === 401) {
      setConnection("API key rejected", "error");
      return;
    }
    setConnection(`Gateway unreachable (${err.message}); retrying`, "error");
    scheduleReconnect();
    return;
  }
  for (const job of page.items) upsert(job);
  if (nextCursor === null) setNextCursor(page.next_cursor);

  const url = new URL(page.links.events, window.location.href);
  url.searchParams.set("last_event_id", `${serverNow - REPLAY_MARGIN_MS}-0`);
  const es = new EventSource(url);
  source = es;
  es.onopen = () => {
    reconnectDelay = 1000;
    setConnection("Live", "ok");
  };
  es.onerror = () => {
    if (es !== source) return;
    if (es.readyState === EventSource.CLOSED) {
      setConnection("Disconnected; reconnecting…", "error");
      scheduleReconnect();
    } else {
      setConnection("Reconnecting…", "busy");
    }
  };
  for (const type of EVENT_TYPES) es.addEventListener(type, onEvent);
}

function setNextCursor(cursor) {
  nextCursor = cursor;
  $("older").hidden = !cursor;
}

async function loadOlder() {
  if (!nextCursor) return;
  try {
    const page = await api("GET",
      `/v1/jobs?limit=${PAGE_SIZE}&cursor=${encodeURIComponent(nextCursor)}`);
    for (const job of page.items) upsert(job);
    setNextCursor(page.next_cursor);
  } catch (err) {
    setConnection(`Cannot load older jobs: ${err.message}`, "error");
  }
}

// --- actions -------------------------------------------------------------------------------

async function act(id, action) {
  try {
    const result = await api("POST", `${jobPath(id)}/${action}`);
    upsert(result.job);
  } catch (err) {
    setSubmitStatus(`${action} ${id.slice(-8)}: ${err.message}`, "error");
  }
}

async function openArtifact(id, name) {
  try {
    const { url } = await api("GET",
      `${jobPath(id)}/artifacts/${encodeURIComponent(name)}/url`);
    window.open(url, "_blank", "noopener");
  } catch (err) {
    setSubmitStatus(`artifact ${name}: ${err.message}`, "error");
  }
}

function fillJobTypes(types) {
  const select = $("job-type");
  const current = select.value;
  payloadSchemas.clear();
  for (const t of types) {
    payloadSchemas.set(t.name, t.payload_schema);
    flowControl.set(t.name, t.flow_control || {});
  }
  const names = types.map((t) => t.name);
  select.replaceChildren(...names.map((name) => el("option", { value: name }, name)));
  const preferred = names.includes(current) ? current : (names.includes("sleep") ? "sleep" : names[0]);
  if (preferred === undefined) return;
  select.value = preferred;
  if (preferred === current) showPayloadFields();
  else showPayloadSkeleton();
}

// --- the payload editor, from the type's JSON Schema --------------------------------------

// A field's own schema: nested models are `{"$ref": "#/$defs/Name"}` into the type's schema.
function resolve(field, root) {
  const ref = field.$ref && field.$ref.match(/^#\/\$defs\/(.+)$/);
  return ref ? (root.$defs || {})[ref[1]] || {} : field;
}

function fieldType(field) {
  if (field.type) return field.type;
  const types = (field.anyOf || []).map((f) => f.type).filter((t) => t && t !== "null");
  return types.length ? types.join(" or ") : null;
}

// Each required field, with its example, its default, or an empty value of its type.
function skeleton(schema, root) {
  const payload = {};
  for (const name of schema.required || []) {
    const field = resolve((schema.properties || {})[name] || {}, root);
    if (field.examples && field.examples.length) payload[name] = field.examples[0];
    else if ("default" in field) payload[name] = field.default;
    else if (field.properties) payload[name] = skeleton(field, root);
    else payload[name] = PLACEHOLDERS[fieldType(field)] ?? null;
  }
  return payload;
}

function showPayloadSkeleton() {
  const schema = payloadSchemas.get($("job-type").value) || {};
  $("payload").value = JSON.stringify(skeleton(schema, schema), null, 2);
  showPayloadFields();
}

// One line per field: name, type, required or default, description.
function showPayloadFields() {
  const schema = payloadSchemas.get($("job-type").value) || {};
  const required = new Set(schema.required || []);
  const items = Object.entries(schema.properties || {}).map(([name, raw]) => {
    const field = resolve(raw, schema);
    const facts = [fieldType(field) || "any JSON value"];
    if (required.has(name)) facts.push("required");
    else if ("default" in raw) facts.push(`default ${JSON.stringify(raw.default)}`);
    if ("minimum" in field) facts.push(`≥ ${field.minimum}`);
    if ("maximum" in field) facts.push(`≤ ${field.maximum}`);
    return el("li", {}, el("code", {}, name), ` ${facts.join(", ")}`,
      raw.description ? el("span", { className: "muted" }, ` — ${raw.description}`) : null);
  });
  const limits = flowControl.get($("job-type").value) || {};
  if (limits.rate_limit) {
    items.push(el("li", { className: "muted" },
      `rate limit ${limits.rate_limit}${limits.rate_key ? ` per ${limits.rate_key}` : ""}, across all workers`));
  }
  if (limits.max_running) {
    items.push(el("li", { className: "muted" },
      `at most ${limits.max_running} running${limits.concurrency_key ? ` per ${limits.concurrency_key}` : ""}`));
  }
  if (schema.additionalProperties !== false) {
    items.push(el("li", { className: "muted" }, items.length ? "other fields too" : "any JSON object"));
  }
  $("payload-fields").replaceChildren(...items);
}

async function submitJob(e) {
  e.preventDefault();
  let payload;
  try {
    payload = JSON.parse($("payload").value.trim() || "{}");
  } catch (err) {
    setSubmitStatus(`Payload is not JSON: ${err.message}`, "error");
    return;
  }
  if (payload === null || typeof payload !== "object" || Array.isArray(payload)) {
    setSubmitStatus("Payload must be a JSON object", "error");
    return;
  }
  const type = $("job-type").value;
  try {
    const priority = Number($("priority").value);
    const body = priority === 5 ? { type, payload } : { type, payload, priority };
    const job = await api("POST", "/v1/jobs", body);
    upsert(job);
    setSubmitStatus(`Submitted ${type} job ${job.id.slice(-8)}`);
  } catch (err) {
    setSubmitStatus(err.message, "error");
  }
}

// Schedules change rarely and send no events: read when connecting, and every minute.
let schedulesTimer = null;

async function loadSchedules() {
  clearTimeout(schedulesTimer);
  schedulesTimer = setTimeout(loadSchedules, 60000);
  let items;
  try {
    ({ items } = await api("GET", "/v1/schedules"));
  } catch (err) {
    console.warn(`cannot read schedules: ${err.message}`);
    return;
  }
  const rows = items.map((s) => el("tr", {},
    el("td", {}, el("code", {}, s.name)),
    el("td", {}, el("code", {}, s.cron), el("div", { className: "note" }, s.timezone)),
    el("td", {}, s.type),
    el("td", {}, s.next_run_at ? new Date(s.next_run_at).toLocaleString() : "—"),
    el("td", {}, s.last_run_at ? new Date(s.last_run_at).toLocaleString() : "never")));
  $("schedules").tBodies[0].replaceChildren(...rows);
  $("schedules-panel").hidden = items.length === 0;
}

function useKey(e) {
  e.preventDefault();
  apiKey = $("api-key").value.trim();
  localStorage.setItem(KEY_STORAGE, apiKey);
  jobs.clear();
  $("jobs").tBodies[0].replaceChildren();
  setNextCursor(null);
  reconnectDelay = 1000;
  connect();
}

function init() {
  // `make run` prints the dev key; `/?key=...` stores it and drops it from the address bar.
  const params = new URLSearchParams(window.location.search);
  if (params.has("key")) {
    localStorage.setItem(KEY_STORAGE, params.get("key"));
    params.delete("key");
    const query = params.toString();
    history.replaceState(null, "", window.location.pathname + (query ? `?${query}` : ""));
  }
  apiKey = localStorage.getItem(KEY_STORAGE) || "";
  $("api-key").value = apiKey;
  $("key-form").addEventListener("submit", useKey);
  $("submit-form").addEventListener("submit", submitJob);
  $("job-type").addEventListener("change", showPayloadSkeleton);
  $("older").addEventListener("click", loadOlder);
  connect();
}

init();
