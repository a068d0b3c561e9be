// Draw server-built Plotly figures; poll a running job; submit jobs from the browser.
function drawAll(figures) {
  // Charts without data are hidden; hiding an empty div by CSS instead would make Plotly measure
  // a zero-width container and fall back to its 700px default.
  for (const el of document.querySelectorAll(".chart")) {
    const fig = (figures || {})[el.id.replace("chart-", "")];
    if (fig && fig.data && fig.data.length) {
      Plotly.newPlot(el, fig.data, fig.layout, {responsive: true, displaylogo: false});
    } else {
      el.style.display = "none";
    }
  }
}

function pollJob(id, status) {
  if (status !== "queued" && status !== "running") return;
  setTimeout(async () => {
    const job = await (await fetch("/api/jobs/" + id)).json();
    document.getElementById("status").textContent = job.status;
    document.getElementById("progress").value = job.progress;
    document.getElementById("progress-msg").textContent = job.progress_message || "";
    if (job.status === "queued" || job.status === "running") pollJob(id, job.status);
    else location.reload();
  }, 2000);
}

function setupSubmit() {
  const form = document.getElementById("submit-form");
  const token = document.getElementById("token");
  const error = document.getElementById("submit-error");
  token.value = localStorage.getItem("wtacrs-token") || "";
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
    localStorage.setItem("wtacrs-token", token.value);
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
