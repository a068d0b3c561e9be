// Draw server-built Plotly figures; poll a running job; submit jobs from the browser.
// The pages run no inline script (their Content-Security-Policy allows none): each page says what it
// has in markup (a JSON block #figures, the job's id on #job-status, the form #submit-form) and
// this file starts what is there.

// The modebar shows on hover only; titles sit below its row (charts._layout), so it never covers
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
    const waiting = document.getElementById("waiting");  // a worker able to run it may come or go
    waiting.textContent = job.waiting_for ? "Waiting for " + job.waiting_for : "";
    waiting.hidden = !job.waiting_for;
    if (job.status === "queued" || job.status === "running") pollJob(id, job.status);
    else location.reload();
  }, 2000);
}

function setupSubmit() {
  const form = document.getElementById("submit-form");
  const token = document.getElementById("token");
  const error = document.getElementById("submit-error");
  // The token lives in this tab's session only: localStorage kept it for any script of the site to
  // read, forever. A token an older page saved there is dropped.
  localStorage.removeItem("wtacrs-token");
  token.value = sessionStorage.getItem("wtacrs-token") || "";
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    let spec;
    try {
      spec = JSON.parse(document.getElementById("spec").value);
    } catch (e) {
      error.textContent = "The spec is not valid JSON: " + e.message;
      error.hidden = false;
      return;
    }
    sessionStorage.setItem("wtacrs-token", token.value);
    const r = await fetch("/api/jobs", {method: "POST", headers: {"Content-Type": "application/json",
      "Authorization": "Bearer " + token.value}, body: JSON.stringify(spec)});
    const body = await r.json();
    if (r.status === 201) { location.href = "/jobs/" + body.id; return; }
    const detail = Array.isArray(body.detail)
      ? body.detail.map(d => (d.loc || []).filter(x => x !== "body").join(".") + ": " + d.msg).join("\n")
      : body.detail;
    error.textContent = "Not submitted (" + r.status + "):\n" + detail;
    error.hidden = false;
  });
}

function start() {
  const figures = document.getElementById("figures");
  // JSON, never script: the server escaped every <, > and & in it (routes.page_json)
  if (figures) drawAll(JSON.parse(figures.textContent));
  const job = document.getElementById("job-status");
  if (job) pollJob(job.dataset.jobId, job.dataset.status);
  if (document.getElementById("submit-form")) setupSubmit();
}

addEventListener("DOMContentLoaded", start);
