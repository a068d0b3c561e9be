// Draw server-built Plotly figures; poll a running job; refresh the jobs list; submit jobs from the
// browser (a spec as JSON, or the "what fits" form).
// The pages run no inline script (their Content-Security-Policy allows none): each page says what it
// has in markup (a JSON block #figures, the job's id on #job-status, the forms #submit-form and
// #fits-form, the list #jobs-list) and this file starts what is there.

// The modebar shows on hover only; titles sit below its row (charts.figure_layout), so it never covers
// them. Gone: the selection tools no chart here uses, and "Share chart", which uploads the figure
// to Plotly Cloud (these pages work offline and their data stays on the server).
const PLOT_CONFIG = {
  responsive: true,
  displaylogo: false,
  displayModeBar: "hover",
  modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d", "sendChartToCloud"],
};

function drawAll(figures) {
  // Charts without data are hidden; hiding an empty div by CSS instead would make Plotly measure
  // a zero-width container and fall back to its 700px default.
  for (const el of document.querySelectorAll(".chart")) {
    const name = el.id.replace("chart-", "");
    const fig = (figures || {})[name];
    if (fig && fig.data && fig.data.length) {
      Plotly.newPlot(el, fig.data, fig.layout, PLOT_CONFIG);
      if (fig.table) el.after(drawTable(fig.table, "table-" + name));
    } else {
      (el.closest(".panel") || el).style.display = "none";
    }
  }
}

function drawTable(spec, id) {
  // The exact numbers beside a chart; textContent throughout, since method names come from specs.
  const table = document.createElement("table");
  table.id = id;
  table.className = "chart-table";
  const rows = [[spec.columns, "th"], ...spec.rows.map((r) => [r, "td"])];
  for (const [cells, tag] of rows) {
    const tr = table.insertRow();
    for (const text of cells) {
      const cell = document.createElement(tag);
      cell.textContent = text;
      if (text.startsWith("N/A")) cell.className = "na";
      // a sentence (a steadiness note) wraps; numbers and names stay on one line
      else if (tag === "td" && text.length > 24 && text.includes(" ")) cell.className = "words";
      tr.append(cell);
    }
  }
  return table;
}

function pollJob(id, status) {
  if (status !== "queued" && status !== "running") return;
  setTimeout(async () => {
    const job = await (await fetch("/api/jobs/" + encodeURIComponent(id))).json();
    document.getElementById("status").textContent = job.status;
    document.getElementById("progress").value = job.progress;
    document.getElementById("progress-msg").textContent = job.progress_message || "";
    const place = document.getElementById("queue-position");
    if (place) place.textContent = job.queue_position ? "#" + job.queue_position + " in queue" : "";
    const waiting = document.getElementById("waiting");  // a worker able to run it may come or go
    waiting.textContent = job.waiting_for ? "Waiting for " + job.waiting_for : "";
    waiting.hidden = !job.waiting_for;
    if (job.status === "queued" || job.status === "running") pollJob(id, job.status);
    else location.reload();
  }, 2000);
}

function refreshJobs(list) {
  // The jobs list as the server renders it (escaped there), fetched again and swapped in; only
  // while the tab is shown. A failed fetch keeps the list there and tries again later.
  setTimeout(async () => {
    try {
      if (document.visibilityState === "visible") {
        const r = await fetch(location.href, {headers: {"Accept": "text/html"}});
        if (r.ok) {
          const fresh = new DOMParser().parseFromString(await r.text(), "text/html").getElementById("jobs-list");
          if (fresh) {
            const current = document.getElementById("jobs-list");
            current.replaceWith(document.adoptNode(fresh));
            list = fresh;
          }
        }
      }
    } catch (e) {
      // the server is away for a moment (a restart): the list stays as it was
    }
    refreshJobs(list);
  }, Number(list.dataset.refreshMs) || 5000);
}

function tokenField() {
  // The token lives in this tab's session only: localStorage kept it for any script of the site to
  // read, forever. A token an older page saved there is dropped.
  const token = document.getElementById("token");
  localStorage.removeItem("wtacrs-token");
  token.value = sessionStorage.getItem("wtacrs-token") || "";
  return token;
}

async function postSpec(spec, token) {
  // POST /api/jobs: {id} when queued, else {message}, the API's own words
  sessionStorage.setItem("wtacrs-token", token);
  const r = await fetch("/api/jobs", {method: "POST", headers: {"Content-Type": "application/json",
    "Authorization": "Bearer " + token}, body: JSON.stringify(spec)});
  const body = await r.json();
  if (r.status === 201) return {id: body.id};
  const detail = Array.isArray(body.detail)
    ? body.detail.map(d => (d.loc || []).filter(x => x !== "body").join(".") + ": " + d.msg).join("\n")
    : body.detail;
  return {message: "Not submitted (" + r.status + "):\n" + detail};
}

function showError(error, text) {
  error.textContent = text;  // text, never markup: the message may quote what was sent
  error.hidden = false;
}

function setupSubmit() {
  const form = document.getElementById("submit-form");
  const token = tokenField();
  const error = document.getElementById("submit-error");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    let spec;
    try {
      spec = JSON.parse(document.getElementById("spec").value);
    } catch (e) {
      showError(error, "The spec is not valid JSON: " + e.message);
      return;
    }
    const sent = await postSpec(spec, token.value);
    if (sent.id) location.href = "/jobs/" + sent.id;
    else showError(error, sent.message);
  });
}

function fitSpec(form) {
  // The estimate job the "what fits" form asks for: the visitor's choices, and what the server put
  // in the form's data- attributes (app/web/fits.py). Throws where the overrides are not JSON.
  const value = (id) => document.getElementById(id).value;
  let model = value("fit-model");
  if (!model) model = {family: value("fit-family"), overrides: JSON.parse(value("fit-overrides") || "{}")};
  return {
    model,
    methods: [...form.querySelectorAll("input[name=fit-method]:checked")].map((box) => box.value),
    seq_len: Number(value("fit-seq-len")),
    batch_sizes: form.dataset.batchSizes.split(",").map(Number),
    dtype: value("fit-dtype"),
    measurements: form.dataset.measurements.split(","),
    device: form.dataset.device,
    target_memory_gb: Number(value("fit-memory")),
    max_batch: {upper: Number(form.dataset.maxBatchUpper)},
  };
}

function setupFits() {
  const form = document.getElementById("fits-form");
  const token = tokenField();
  const error = document.getElementById("fit-error");
  const memory = document.getElementById("fit-memory");
  const sizes = form.querySelectorAll("button.gpu-size");
  const press = () => sizes.forEach((b) => b.setAttribute("aria-pressed", String(Number(b.dataset.gb) === Number(memory.value))));
  sizes.forEach((b) => b.addEventListener("click", () => { memory.value = b.dataset.gb; press(); }));
  memory.addEventListener("input", press);
  const model = document.getElementById("fit-model");
  const custom = document.getElementById("fit-custom");
  const toggle = () => { custom.hidden = model.value !== ""; };
  model.addEventListener("change", toggle);
  toggle();
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    let spec;
    try {
      spec = fitSpec(form);
    } catch (e) {
      showError(error, "The overrides are not valid JSON: " + e.message);
      return;
    }
    const sent = await postSpec(spec, token.value);
    if (sent.id) location.href = "/fits/" + encodeURIComponent(sent.id);
    else showError(error, sent.message);
  });
}

function start() {
  const figures = document.getElementById("figures");
  // JSON, never script: the server escaped every <, > and & in it (routes.page_json)
  if (figures) drawAll(JSON.parse(figures.textContent));
  const job = document.getElementById("job-status");
  if (job) pollJob(job.dataset.jobId, job.dataset.status);
  const list = document.getElementById("jobs-list");
  if (list) refreshJobs(list);
  if (document.getElementById("submit-form")) setupSubmit();
  if (document.getElementById("fits-form")) setupFits();
}

addEventListener("DOMContentLoaded", start);
