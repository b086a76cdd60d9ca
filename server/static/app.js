// tmpq web page: the job list (/) and a job's page (/jobs/{id}).
// Reads only the public REST API under /api/v1; draws with Chart.js (vendored, global `Chart`).

import { jobActivity, supernetText } from "./activity.js";

const API = "/api/v1";
const TOKEN_KEY = "tmpq.token";
const REFRESH_MS = 3000;
const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);
const PAGE_ROWS = 200;
const QUALITY_LABELS = {
  mse: "MSE vs FP reference (lower is better)",
  latent_mse: "latent MSE vs FP reference (lower is better)",
  fdd: "FDD to real data (lower is better)",
  fd: "Fréchet distance to FP samples, job's feature space (lower is better)",
};
const COLORS = {
  front: "#2563eb",
  evaluated: "rgba(100, 116, 139, 0.45)",
  faded: "rgba(148, 163, 184, 0.18)",
  baseline: "#dc2626",
  reference: "#111827",
  selected: "#0f172a",
  budget: "#475569",
};

// -- small helpers ---------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/**
 * Send `method url` with the stored bearer token, if any (the same token for reads and for mutating calls); the
 * response when it is OK, else an ApiError with the detail (401/403 also open the token bar).
 */
async function authorizedFetch(method, url, accept) {
  const headers = { Accept: accept };
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(url, { method, headers });
  if (response.status === 401 || response.status === 403) {
    showAuth();
    throw new ApiError(response.status, "a valid token is required");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (_) {
      /* not JSON */
    }
    throw new ApiError(response.status, detail);
  }
  return response;
}

/** GET `url` with the stored bearer token, if any (see authorizedFetch). */
async function authorizedGet(url, accept) {
  return authorizedFetch("GET", url, accept);
}

/** GET a JSON document from the API (with the stored bearer token, if any). */
async function api(path) {
  return (await authorizedGet(`${API}${path}`, "application/json")).json();
}

/** Build an element: h("td", {class: "num"}, "text", child, ...). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const $ = (id) => document.getElementById(id);
const isNum = (v) => typeof v === "number" && Number.isFinite(v);

function fmtNumber(v, digits = 4) {
  if (!isNum(v)) return "—";
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(digits - 1);
  return Number(v.toPrecision(digits)).toLocaleString("en-US", { maximumFractionDigits: 6 });
}

function fmtBitOps(v) {
  if (!isNum(v)) return "—";
  const units = [["TBitOps", 1e12], ["GBitOps", 1e9], ["MBitOps", 1e6], ["kBitOps", 1e3]];
  for (const [unit, scale] of units) {
    if (Math.abs(v) >= scale) return `${Number((v / scale).toPrecision(4))} ${unit}`;
  }
  return `${fmtNumber(v)} BitOps`;
}

const fmtG = (v) => (isNum(v) ? String(Number((v / 1e9).toPrecision(4))) : "—");
/** A ratio as "1.45×" (three significant digits). */
const fmtTimes = (v) => (isNum(v) ? `${Number(v.toPrecision(3))}×` : "—");

function fmtBytes(v) {
  if (!isNum(v)) return "—";
  const units = [["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]];
  for (const [unit, scale] of units) {
    if (v >= scale) return `${Number((v / scale).toPrecision(3))} ${unit}`;
  }
  return `${Math.round(v)} B`;
}

function fmtAgo(iso) {
  if (!iso) return "—";
  const seconds = (Date.now() - Date.parse(iso)) / 1000;
  if (!Number.isFinite(seconds)) return "—";
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}

function fmtDuration(fromIso, toIso) {
  if (!fromIso) return "—";
  const seconds = ((toIso ? Date.parse(toIso) : Date.now()) - Date.parse(fromIso)) / 1000;
  if (!Number.isFinite(seconds) || seconds < 0) return "—";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

/**
 * A field of a job's spec by its dotted name ("search.algorithm"): the API answers specs in sections (version 2);
 * a flat version-1 one is read by the field's own name, and a bare model path string is its "model.path".
 */
function specField(spec, dotted, fallback = null) {
  if (!spec || typeof spec !== "object") return fallback;
  if (dotted === "model.path" && typeof spec.model === "string") return spec.model;
  let value = spec;
  for (const part of dotted.split(".")) {
    value = value !== null && typeof value === "object" && part in value ? value[part] : undefined;
    if (value === undefined) break;
  }
  if (value === undefined && spec.version === 1) value = spec[dotted.split(".").pop()];
  return value === undefined || value === null ? fallback : value;
}

const modelName = (spec) => String(specField(spec, "model.path", "")).split("/").filter(Boolean).pop() || "—";
const objectiveOf = (spec, fallback = "mse") => specField(spec, "evaluation.objective", fallback);
const latencyBackendOf = (spec) => specField(spec, "evaluation.latency_backend", "measured");

function badge(state) {
  return h("span", { class: `badge ${String(state).toLowerCase()}` }, state);
}

/** [fraction 0..1, text] of a job's progress. */
function progressOf(job) {
  const p = job.progress;
  const done = p.generation === null ? 0 : p.generation + 1;
  if (job.state === "SUCCEEDED") return [1, p.generations ? `${done}/${p.generations} generations` : "done"];
  if (!p.generations) return [0, `${done} generations`];
  return [Math.min(1, done / p.generations), `${done}/${p.generations} generations`];
}

function progressBar(job, wide = false) {
  const [fraction, text] = progressOf(job);
  return h(
    "div",
    { class: `progress${wide ? " wide" : ""} ${job.state.toLowerCase()}`, title: text },
    h("div", { class: "bar", style: `width:${(fraction * 100).toFixed(1)}%` }),
  );
}

function showAuth() {
  const bar = $("authbar");
  if (!bar.hidden) return;
  bar.hidden = false;
  $("token").focus();
}

function setupAuth() {
  $("authbar").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
    window.location.reload();
  });
}

function showError(message) {
  const view = $("view");
  view.replaceChildren(h("div", { class: "alert error" }, message), h("p", {}, h("a", { href: "/" }, "← All jobs")));
}

// -- the job list ----------------------------------------------------------------------------------------

const LIST_LIMIT = 50;

async function jobListView() {
  document.title = "Jobs · tmpq";
  const view = $("view");
  view.replaceChildren($("list-template").content.cloneNode(true));
  const state = { filter: "", offset: 0, timer: null };

  for (const chip of document.querySelectorAll("#state-filter .chip")) {
    chip.addEventListener("click", () => {
      document.querySelectorAll("#state-filter .chip").forEach((c) => c.classList.toggle("active", c === chip));
      state.filter = chip.dataset.state;
      state.offset = 0;
      refresh();
    });
  }
  $("jobs-prev").addEventListener("click", () => {
    state.offset = Math.max(0, state.offset - LIST_LIMIT);
    refresh();
  });
  $("jobs-next").addEventListener("click", () => {
    state.offset += LIST_LIMIT;
    refresh();
  });

  async function refresh() {
    clearTimeout(state.timer);
    const query = new URLSearchParams({ limit: LIST_LIMIT, offset: state.offset });
    if (state.filter) query.append("state", state.filter);
    let page;
    try {
      page = await api(`/jobs?${query}`);
    } catch (error) {
      showError(`Could not list the jobs: ${error.message}`);
      return;
    }
    renderJobs(page);
    if (page.items.some((job) => !TERMINAL.has(job.state))) state.timer = setTimeout(refresh, REFRESH_MS);
  }

  function renderJobs(page) {
    const rows = page.items.map((job) => {
      const link = `/jobs/${job.id}`;
      const [, progressText] = progressOf(job);
      const activity = jobActivity(job);
      const row = h(
        "tr",
        { class: "clickable", dataset: { jobId: job.id, state: job.state } },
        h("td", {}, h("a", { href: link }, `#${job.id}`)),
        h("td", { title: specField(job.spec, "model.path", "") }, modelName(job.spec)),
        h(
          "td",
          {},
          specField(job.spec, "search.algorithm", "—"),
          h("span", { class: "muted small" }, ` · ${objectiveOf(job.spec, "")}`),
        ),
        h("td", {}, badge(job.state), job.cancel_requested && !TERMINAL.has(job.state) ? " cancelling" : ""),
        h(
          "td",
          { class: "progress-col" },
          progressBar(job),
          h("span", { class: "muted small" }, progressText),
          activity ? h("div", { class: "activity small" }, activity) : "",
        ),
        h(
          "td",
          { class: "num" },
          job.progress.evaluated,
          job.progress.failed ? h("span", { class: "muted small" }, ` (${job.progress.failed} failed)`) : "",
        ),
        h("td", { class: "num" }, job.progress.front_size),
        h("td", { class: "num" }, fmtNumber(job.progress.hypervolume)),
        h("td", { title: job.created_at }, fmtAgo(job.created_at)),
        h("td", { title: job.updated_at }, fmtAgo(job.updated_at)),
      );
      row.addEventListener("click", (event) => {
        if (!event.target.closest("a")) window.location.href = link;
      });
      return row;
    });
    $("jobs-body").replaceChildren(...rows);
    $("jobs-table").dataset.rows = String(rows.length);
    $("jobs-empty").hidden = page.total > 0;
    $("jobs-pager").hidden = page.total <= LIST_LIMIT;
    $("jobs-range").textContent = page.items.length
      ? `${page.offset + 1}–${page.offset + page.items.length} of ${page.total}`
      : "";
    $("jobs-prev").disabled = page.offset === 0;
    $("jobs-next").disabled = page.offset + page.items.length >= page.total;
  }

  await refresh();
}

// -- a job's page ----------------------------------------------------------------------------------------

/** The budget in BitOps of a job spec, given its candidates ("WxAy@K" is the BitOps of that baseline). */
function specBudget(spec, candidates) {
  const budget = specField(spec, "search.budget");
  if (isNum(budget)) return budget;
  if (typeof budget !== "string") return null;
  const match = /^\s*W(\d+)\s*A(\d+)\s*@\s*(\d+)\s*$/i.exec(budget);
  if (!match) return null;
  const bits = `W${Number(match[1])}A${Number(match[2])}`;
  const steps = Number(match[3]);
  const baseline = candidates.find((c) => c.is_baseline && c.bits === bits && c.steps === steps && isNum(c.bitops));
  return baseline ? baseline.bitops : null;
}

const plottable = (c) => isNum(c.quality) && isNum(c.bitops) && c.bitops > 0;

function exportCommand(jobId, key) {
  return `tmpq export ${jobId} ${key} --out out/job-${jobId}/${key}`;
}

function exportUrl(jobId, key) {
  return `${API}/jobs/${jobId}/candidates/${encodeURIComponent(key)}/export`;
}

/**
 * Build and download a candidate's export: POST (building it is a mutating call: the server wants its write token,
 * the stored one is sent) answers the zip; reports in #export-status.
 */
async function downloadExport(jobId, key, button) {
  const status = $("export-status");
  const say = (text) => {
    if (status) status.textContent = text;
  };
  if (button) button.disabled = true;
  say(`Building the export of ${key.slice(0, 12)}… (a few seconds the first time)`);
  try {
    const response = await authorizedFetch("POST", exportUrl(jobId, key), "application/zip");
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    const link = h("a", { href: url, download: `tmpq-job${jobId}-${key}.zip`, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
    say(`Downloaded tmpq-job${jobId}-${key}.zip (${fmtBytes(blob.size)}).`);
  } catch (error) {
    say(`Export failed: ${error.status ? `HTTP ${error.status}: ` : ""}${error.message}`);
  } finally {
    if (button) button.disabled = false;
  }
}

function measureUrl(jobId, key, backend, batchSize) {
  const query = new URLSearchParams({ backend, batch_size: String(batchSize) });
  return `${API}/jobs/${jobId}/candidates/${encodeURIComponent(key)}/measure?${query}`;
}

/** A measurement's memory against FP, when it measured memory (a fresh process's peak over FP's). */
const memoryMeasured = (m) => isNum(m.memory_ratio) && isNum(m.fp_peak_rss_bytes) && m.fp_peak_rss_bytes > 0;

/**
 * The detail rows of a candidate's run-time measurements (`runtime`, from `tmpq measure` or the Measure button),
 * fastest end to end first: per backend, the speed-up per step and end to end against FP, and the peak memory.
 */
function measuredRows(c) {
  return Object.entries(c.runtime || {})
    .filter(([, m]) => m && isNum(m.speedup_vs_reference))
    .sort(([, a], [, b]) => b.speedup_vs_reference - a.speedup_vs_reference)
    .flatMap(([backend, m]) => {
      const when = `measured ${m.measured_at || "?"} on ${m.machine || "?"}, ${m.threads} threads`;
      const rows = [
        [
          `Speed-up (${backend})`,
          `${fmtTimes(m.speedup_per_step)} per step · ${fmtTimes(m.speedup_vs_reference)} vs FP at ${m.reference_steps} steps`,
          `batch ${m.batch_size}: a step ${fmtNumber(m.step_ms)} ms vs FP32 ${fmtNumber(m.fp_step_ms)} ms; sampling ` +
            `${fmtNumber(m.sample_ms)} ms (K=${m.steps}) vs FP ${fmtNumber(m.fp_sample_ms)} ms; ${when}`,
        ],
      ];
      if (memoryMeasured(m)) {
        rows.push([
          `Memory (${backend})`,
          `${fmtTimes(m.memory_ratio)} FP peak (${fmtBytes(m.peak_rss_bytes)} vs ${fmtBytes(m.fp_peak_rss_bytes)})`,
          `peak resident memory of a fresh process loading and running a step at batch ${m.batch_size}; weights ` +
            `${fmtBytes(m.weight_bytes)} vs FP32 ${fmtBytes(m.fp_weight_bytes)}`,
        ]);
      }
      return rows;
    });
}

/**
 * Measure a candidate's export against FP on the server (a POST: it needs the write token, the stored one is
 * sent); the answer is the candidate with its `runtime`, shown at once. Reports in #measure-status.
 */
async function measureCandidate(state, key, button) {
  const status = $("measure-status");
  const backend = $("measure-backend").value;
  const batch = Number($("measure-batch").value);
  if (!Number.isInteger(batch) || batch < 1 || batch > 1024) {
    status.textContent = "The batch must be a whole number from 1 to 1024.";
    return;
  }
  const slow = backend === "cpu-int8" ? "minutes: it compiles" : "about a minute";
  status.textContent = `Measuring ${key.slice(0, 12)} on ${backend} at batch ${batch}… (${slow})`;
  button.disabled = true;
  try {
    const response = await authorizedFetch("POST", measureUrl(state.job.id, key, backend, batch), "application/json");
    const measured = await response.json();
    measured.non_dominated = state.frontKeys.has(measured.key);
    state.candidates.set(measured.key, measured);
    const m = measured.runtime[backend];
    status.textContent =
      `Measured on ${backend}: ${fmtTimes(m.speedup_per_step)} per step, ${fmtTimes(m.speedup_vs_reference)} vs FP ` +
      `at ${m.reference_steps} steps` + (memoryMeasured(m) ? `, memory ${fmtTimes(m.memory_ratio)} FP.` : ".");
    if (state.selected === measured.key) renderSelection(state);
  } catch (error) {
    status.textContent = `Measuring failed: ${error.status ? `HTTP ${error.status}: ` : ""}${error.message}`;
  } finally {
    button.disabled = false;
  }
}

async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = h("textarea", { readonly: true, style: "position:fixed;opacity:0" }, text);
  document.body.append(area);
  area.select();
  const ok = document.execCommand("copy");
  area.remove();
  if (!ok) throw new Error("the browser refused to copy");
}

async function jobView(jobId) {
  document.title = `Job ${jobId} · tmpq`;
  const view = $("view");
  const params = new URLSearchParams(window.location.search);
  const state = {
    job: null,
    candidates: new Map(), // key -> candidate, in storage order
    cursor: 0,
    frontKeys: new Set(),
    knee: null,
    hypervolume: [],
    budget: params.has("budget") ? Number(params.get("budget")) : null, // BitOps, null: none
    budgetTouched: params.has("budget"),
    selected: params.get("candidate"),
    filter: "all",
    withinBudget: false,
    search: "",
    sort: { key: "bitops", dir: 1 },
    rows: PAGE_ROWS,
    timer: null,
  };

  try {
    state.job = await api(`/jobs/${jobId}`);
  } catch (error) {
    showError(error.status === 404 ? `Job ${jobId} does not exist.` : `Could not load job ${jobId}: ${error.message}`);
    return;
  }
  view.replaceChildren($("job-template").content.cloneNode(true));
  const pareto = makeParetoChart(state);
  const hvChart = makeHypervolumeChart();
  wireControls(state);

  async function load() {
    clearTimeout(state.timer);
    try {
      const [job, hv] = await Promise.all([api(`/jobs/${jobId}`), api(`/jobs/${jobId}/hypervolume`)]);
      state.job = job;
      state.hypervolume = hv.items;
      // new candidates since the last load (the cursor), then the current front (its flags change every generation)
      for (;;) {
        const page = await api(`/jobs/${jobId}/candidates?after=${state.cursor}&limit=1000`);
        for (const c of page.items) state.candidates.set(c.key, c);
        if (page.items.length) state.cursor = page.items[page.items.length - 1].seq;
        if (page.next_after === null) break;
      }
      const front = await api(`/jobs/${jobId}/front?knee=true`);
      state.frontKeys = new Set(front.items.map((c) => c.key));
      state.knee = front.knee ? front.knee.key : null;
      state.fpReferences = front.fp_references || [];
      for (const c of state.candidates.values()) c.non_dominated = state.frontKeys.has(c.key);
    } catch (error) {
      $("job-error").hidden = false;
      $("job-error").textContent = `Could not refresh: ${error.message}`;
      state.timer = setTimeout(load, REFRESH_MS * 2);
      return;
    }
    const all = [...state.candidates.values()];
    state.jobBudget = specBudget(state.job.spec, all);
    if (!state.budgetTouched) state.budget = state.jobBudget;
    if (!state.selected || !state.candidates.has(state.selected)) state.selected = defaultSelection(state);
    renderHeader(state);
    renderBudget(state);
    pareto.render();
    renderHypervolume(state, hvChart);
    renderSelection(state);
    renderTable(state);
    if (TERMINAL.has(state.job.state)) {
      await renderSamples(state);
      showGrids(state);
    } else state.timer = setTimeout(load, REFRESH_MS);
  }

  state.rerender = () => {
    syncUrl(state);
    renderBudget(state);
    pareto.render();
    renderSelection(state);
    renderTable(state);
    showGrids(state);
  };
  await load();
}

/**
 * The finished job's sample grids: what they are (fetched once, with the token like every read); the card stays
 * hidden when the job has none. showGrids puts the selected point's grids in it.
 */
async function renderSamples(state) {
  if (state.samples) return;
  try {
    state.samples = await api(`/jobs/${state.job.id}/samples`);
  } catch (_) {
    return; // 409: no grids (a failed or cancelled job, or one run before grids existed)
  }
  const meta = state.samples;
  state.gridUrls = new Map();
  $("samples-note").textContent = `same noise (seed ${meta.seed}), ${meta.columns} per row`;
  const prompts = meta.rows.filter((r) => r);
  $("samples-rows").replaceChildren(...prompts.map((p) => h("li", {}, p)));
  $("samples").hidden = false;
}

/** A grid's object URL (fetched once). */
async function gridUrl(state, name) {
  if (!state.gridUrls.has(name)) {
    const response = await authorizedGet(`${API}/jobs/${state.job.id}/samples/${name}.png`, "image/png");
    state.gridUrls.set(name, URL.createObjectURL(await response.blob()));
  }
  return state.gridUrls.get(name);
}

/**
 * The three grids from the same noise for the selected front point: FP at the reference schedule, FP at the
 * point's own schedule (what fewer steps alone do), the point (what its bits add); the knee's when the selected
 * candidate has none (only front points get grids).
 */
async function showGrids(state) {
  const meta = state.samples;
  if (!meta || !meta.grids) return;
  const points = meta.points || {};
  const key = points[state.selected] ? state.selected : meta.knee;
  const entry = points[key];
  const shown = [["samples-fp", "fp", `FP, ${meta.fp_steps} steps (${meta.solver}): the reference`]];
  if (entry) {
    shown.push(["samples-schedule", entry.fp_grid, `FP on the point's ${entry.steps} steps (no quantization)`]);
    shown.push(["samples-point", entry.grid, `${entry.bits}, K=${entry.steps} (${key})`]);
  } else {
    shown.push(["samples-point", "knee", `knee ${meta.knee_bits}, K=${meta.knee_steps} (${meta.knee})`]);
  }
  const turn = (state.gridTurn = (state.gridTurn || 0) + 1);
  const urls = await Promise.all(shown.map(([, name]) => (meta.grids.includes(name) ? gridUrl(state, name) : null)));
  if (turn !== state.gridTurn) return; // a later selection's grids are on their way
  $("samples-schedule").closest("figure").hidden = !entry;
  $("samples-which").textContent =
    key === state.selected ? "" : "The selected candidate has no grids (only front points do): the knee's are shown.";
  shown.forEach(([id, , caption], i) => {
    if (urls[i] === null) return;
    $(id).src = urls[i];
    $(`${id}-caption`).textContent = caption;
  });
}

/** Tooltip lines of an FP reference point. */
function referenceLines(state, ref) {
  const lines = [`${objectiveOf(state.job.spec, "quality")}: ${fmtNumber(ref.quality)}`];
  if (isNum(ref.psnr)) lines.push(`PSNR vs FP reference: ${fmtNumber(ref.psnr, 3)} dB`);
  if (isNum(ref.ssim)) lines.push(`SSIM: ${fmtNumber(ref.ssim, 3)}`);
  if (isNum(ref.fdd_rescored)) lines.push(`FDD re-scored: ${fmtNumber(ref.fdd_rescored)}`);
  lines.push(`cost: ${fmtBitOps(ref.bitops)}`);
  return lines;
}

/** Rows that split a front point's error: against FP on its own schedule (its bits) and against the reference. */
function errorRows(state, c) {
  const o = c.objectives || {};
  if (!isNum(o.quant_psnr) && !isNum(o.quant_mse)) return [];
  const same = (state.fpReferences || []).find(
    (r) => (r.timesteps || []).join(",") === (c.candidate.timesteps || []).join(","),
  );
  const rows = [
    ["Error of its bits", `${fmtNumber(o.quant_psnr, 3)} dB PSNR vs FP on its own ${c.steps} steps`, "quant_psnr"],
  ];
  if (same && isNum(same.psnr)) rows.push(["Error of its steps", `${fmtNumber(same.psnr, 3)} dB (FP at K vs reference)`]);
  if (isNum(o.psnr)) rows.push(["Total error", `${fmtNumber(o.psnr, 3)} dB PSNR vs the FP reference`, "psnr"]);
  return rows;
}

/** Best quality within the budget, else the knee of the front, else the first candidate. */
function defaultSelection(state) {
  const all = [...state.candidates.values()].filter(plottable);
  if (isNum(state.budget)) {
    const within = all.filter((c) => c.bitops <= state.budget).sort((a, b) => a.quality - b.quality);
    if (within.length) return within[0].key;
  }
  if (state.knee) return state.knee;
  return all.length ? all[0].key : null;
}

function syncUrl(state) {
  const params = new URLSearchParams();
  if (state.selected) params.set("candidate", state.selected);
  if (state.budgetTouched && isNum(state.budget)) params.set("budget", String(state.budget));
  const query = params.toString();
  history.replaceState(null, "", `${window.location.pathname}${query ? `?${query}` : ""}`);
}

function select(state, key) {
  state.selected = key;
  state.rerender();
}

function renderHeader(state) {
  const job = state.job;
  const spec = job.spec;
  $("crumb-job").textContent = `Job #${job.id}`;
  $("job-title").textContent = `Job #${job.id} · ${modelName(spec)}`;
  const steps = [].concat(specField(spec, "search.steps", [])).join(", ");
  const bits = [].concat(specField(spec, "search.bit_options", [])).join(", ");
  $("job-subtitle").textContent =
    `${specField(spec, "search.algorithm", "search")} over K ∈ {${steps}} × bits {${bits}}, ` +
    `${objectiveOf(spec)} objective` +
    (job.submission_id ? ` · ${job.submission_id}` : "");
  const stateBadge = $("job-state");
  stateBadge.className = `badge ${job.state.toLowerCase()}`;
  stateBadge.textContent = job.cancel_requested && !TERMINAL.has(job.state) ? `${job.state} · cancelling` : job.state;
  const [fraction, text] = progressOf(job);
  const progress = $("job-progress");
  progress.className = `progress wide ${job.state.toLowerCase()}`;
  progress.firstElementChild.style.width = `${(fraction * 100).toFixed(1)}%`;
  $("job-progress-text").textContent = text;
  const activity = jobActivity(job);
  $("job-activity").hidden = !activity;
  $("job-activity").textContent = activity || "";
  const error = $("job-error");
  error.hidden = !job.error;
  error.textContent = job.error ? `Failed: ${job.error}` : "";
  const supernet = supernetText(job.calibration);
  $("job-supernet").hidden = !supernet;
  $("job-supernet").textContent = supernet ? `Supernet: ${supernet}` : "";
  const warnings = job.warnings || [];
  $("job-warnings").hidden = warnings.length === 0;
  $("job-warnings").replaceChildren(...warnings.map((w) => h("div", {}, `Warning: ${w}`)));

  const p = job.progress;
  const stat = (label, value, note = "") =>
    h("div", { class: "stat" }, h("span", { class: "label" }, label), h("span", { class: "value" }, value),
      note ? h("span", { class: "note" }, note) : "");
  $("job-stats").replaceChildren(
    stat("Generation", p.generation === null ? "—" : `${p.generation + 1}`, p.generations ? `of ${p.generations}` : ""),
    stat("Evaluated", String(p.evaluated), p.failed ? `${p.failed} failed` : "none failed"),
    stat("Pareto front", String(p.front_size), "points"),
    stat("Hypervolume", fmtNumber(p.hypervolume)),
    budgetStat(stat, spec, state.jobBudget),
    stat("Run time", fmtDuration(job.started_at, job.finished_at), job.attempts > 1 ? `${job.attempts} attempts` : ""),
  );
  $("job-spec").textContent = JSON.stringify(spec, null, 2);
  $("quality-head").textContent = objectiveOf(spec, "quality").toUpperCase();
}

/** The budget card: its BitOps when known; a "WxAy@K" budget costs what that baseline costs once evaluated. */
function budgetStat(stat, spec, bitops) {
  const budget = specField(spec, "search.budget");
  if (isNum(bitops)) return stat("Budget", fmtBitOps(bitops), typeof budget === "string" ? budget : "");
  if (typeof budget === "string" && budget) return stat("Budget", budget, "cost known once evaluated");
  return stat("Budget", "none");
}

// -- budget filter ---------------------------------------------------------------------------------------

/** The slider maps 0..1000 onto log10 BitOps between the cheapest and the dearest candidate. */
function budgetScale(state) {
  const values = [...state.candidates.values()].filter(plottable).map((c) => c.bitops);
  if (isNum(state.jobBudget)) values.push(state.jobBudget);
  if (!values.length) return null;
  const lo = Math.log10(Math.min(...values)) - 0.02;
  const hi = Math.log10(Math.max(...values)) + 0.02;
  return {
    toSlider: (bitops) => Math.round(((Math.log10(bitops) - lo) / (hi - lo)) * 1000),
    fromSlider: (position) => 10 ** (lo + (position / 1000) * (hi - lo)),
  };
}

function wireControls(state) {
  const input = $("budget-input");
  const range = $("budget-range");
  $("budget-form").addEventListener("submit", (event) => event.preventDefault());
  input.addEventListener("change", () => {
    const value = Number(input.value);
    state.budget = input.value.trim() === "" || !(value > 0) ? null : value * 1e9;
    state.budgetTouched = true;
    state.rerender();
  });
  range.addEventListener("input", () => {
    const scale = budgetScale(state);
    if (!scale) return;
    state.budget = scale.fromSlider(Number(range.value));
    state.budgetTouched = true;
    state.rerender();
  });
  $("budget-clear").addEventListener("click", () => {
    state.budget = null;
    state.budgetTouched = true;
    state.rerender();
  });
  $("png-button").addEventListener("click", async () => {
    const query = isNum(state.budget) ? `?budget=${state.budget}` : "";
    const headers = {};
    const token = localStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await fetch(`${API}/jobs/${state.job.id}/front.png${query}`, { headers });
    if (!response.ok) return;
    const url = URL.createObjectURL(await response.blob());
    window.open(url, "_blank", "noopener");
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  });
  $("export-button").addEventListener("click", (event) => {
    if (state.selected) downloadExport(state.job.id, state.selected, event.currentTarget);
  });
  $("measure-button").addEventListener("click", (event) => {
    if (state.selected) measureCandidate(state, state.selected, event.currentTarget);
  });
  $("copy-button").addEventListener("click", async () => {
    const status = $("copy-status");
    try {
      await copyText($("export-command").textContent);
      status.textContent = "Copied to the clipboard.";
    } catch (error) {
      status.textContent = `Select the command and copy it by hand (${error.message}).`;
    }
  });
  for (const chip of document.querySelectorAll("#cand-filter .chip")) {
    chip.addEventListener("click", () => {
      document.querySelectorAll("#cand-filter .chip").forEach((c) => c.classList.toggle("active", c === chip));
      state.filter = chip.dataset.filter;
      state.rows = PAGE_ROWS;
      renderTable(state);
    });
  }
  $("cand-budget").addEventListener("change", (event) => {
    state.withinBudget = event.target.checked;
    state.rows = PAGE_ROWS;
    renderTable(state);
  });
  $("cand-search").addEventListener("input", (event) => {
    state.search = event.target.value.trim().toLowerCase();
    state.rows = PAGE_ROWS;
    renderTable(state);
  });
  for (const th of document.querySelectorAll("#cand-table th[data-sort]")) {
    th.addEventListener("click", () => {
      const key = th.dataset.sort;
      state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : 1 };
      renderTable(state);
    });
  }
  $("cand-more-button").addEventListener("click", () => {
    state.rows += PAGE_ROWS;
    renderTable(state);
  });
}

function renderBudget(state) {
  const input = $("budget-input");
  const range = $("budget-range");
  const scale = budgetScale(state);
  range.disabled = !scale;
  if (document.activeElement !== input) input.value = isNum(state.budget) ? fmtG(state.budget) : "";
  if (scale && document.activeElement !== range) range.value = isNum(state.budget) ? scale.toSlider(state.budget) : 1000;
  const all = [...state.candidates.values()].filter(plottable);
  const note = $("budget-note");
  if (!isNum(state.budget)) {
    note.textContent = isNum(state.jobBudget) ? `job budget: ${fmtBitOps(state.jobBudget)}` : "no budget";
    return;
  }
  const within = all.filter((c) => c.bitops <= state.budget);
  const best = within.reduce((b, c) => (b === null || c.quality < b.quality ? c : b), null);
  note.textContent = `${within.length} of ${all.length} within budget` +
    (best ? ` · best ${fmtNumber(best.quality)} (${best.bits}, K=${best.steps})` : "");
}

// -- the Pareto chart ------------------------------------------------------------------------------------

/** Draws the budget as a dashed vertical line and shades the BitOps above it. */
const budgetLinePlugin = {
  id: "budgetLine",
  beforeDatasetsDraw(chart, _args, options) {
    const budget = options.value;
    if (!isNum(budget)) return;
    const { ctx, chartArea, scales } = chart;
    const x = scales.x.getPixelForValue(budget / 1e9);
    if (!Number.isFinite(x)) return;
    ctx.save();
    if (x < chartArea.right) {
      ctx.fillStyle = "rgba(148, 163, 184, 0.10)";
      const left = Math.max(x, chartArea.left);
      ctx.fillRect(left, chartArea.top, chartArea.right - left, chartArea.bottom - chartArea.top);
    }
    if (x >= chartArea.left && x <= chartArea.right) {
      ctx.strokeStyle = COLORS.budget;
      ctx.setLineDash([6, 4]);
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      ctx.moveTo(x, chartArea.top);
      ctx.lineTo(x, chartArea.bottom);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillStyle = COLORS.budget;
      ctx.font = "12px system-ui, sans-serif";
      ctx.textAlign = x > chartArea.right - 120 ? "right" : "left";
      ctx.fillText(`budget ${fmtG(budget)} GBitOps`, x + (ctx.textAlign === "right" ? -6 : 6), chartArea.top + 14);
    }
    ctx.restore();
  },
};

function point(c) {
  return { x: c.bitops / 1e9, y: c.quality, key: c.key };
}

function makeParetoChart(state) {
  const canvas = $("pareto-canvas");
  const over = (ctx) => isNum(state.budget) && ctx.raw && ctx.raw.x * 1e9 > state.budget;
  const chart = new Chart(canvas, {
    type: "scatter",
    data: {
      datasets: [
        {
          label: "Pareto front",
          data: [],
          showLine: true,
          borderColor: COLORS.front,
          backgroundColor: (ctx) => (over(ctx) ? "rgba(37, 99, 235, 0.25)" : COLORS.front),
          pointBorderColor: (ctx) => (over(ctx) ? "rgba(37, 99, 235, 0.25)" : COLORS.front),
          borderWidth: 2,
          pointRadius: 4,
          pointHoverRadius: 6,
          order: 2,
        },
        {
          label: "Uniform baselines",
          data: [],
          pointStyle: "rect",
          borderColor: (ctx) => (over(ctx) ? "rgba(220, 38, 38, 0.3)" : COLORS.baseline),
          backgroundColor: "rgba(220, 38, 38, 0.08)",
          borderWidth: 1.5,
          pointRadius: 6,
          pointHoverRadius: 8,
          order: 1,
        },
        {
          label: "Evaluated",
          data: [],
          backgroundColor: (ctx) => (over(ctx) ? COLORS.faded : COLORS.evaluated),
          borderWidth: 0,
          pointRadius: 3,
          pointHoverRadius: 5,
          order: 3,
        },
        {
          label: "Selected",
          data: [],
          borderColor: COLORS.selected,
          backgroundColor: "rgba(0,0,0,0)",
          borderWidth: 2,
          pointRadius: 10,
          pointHoverRadius: 10,
          order: 0,
        },
        {
          label: "FP at the front's schedules",
          data: [],
          pointStyle: "rectRot",
          borderColor: COLORS.reference,
          backgroundColor: "rgba(17, 24, 39, 0.08)",
          borderWidth: 1.5,
          pointRadius: 6,
          pointHoverRadius: 8,
          order: 1,
        },
      ],
    },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      parsing: false,
      interaction: { mode: "nearest", intersect: true },
      scales: {
        x: {
          type: "logarithmic",
          title: { display: true, text: "BitOps per sample, whole schedule (GBitOps, log scale)" },
          ticks: { callback: (value) => fmtNumber(value, 3) },
          grid: { color: "rgba(148, 163, 184, 0.25)" },
        },
        y: {
          type: "logarithmic",
          title: { display: true, text: "quality" },
          ticks: { callback: (value) => fmtNumber(value, 3) },
          grid: { color: "rgba(148, 163, 184, 0.25)" },
        },
      },
      plugins: {
        budgetLine: { value: null },
        legend: {
          position: "bottom",
          labels: {
            usePointStyle: true,
            filter: (item, data) => data.datasets[item.datasetIndex].data.length > 0,
            sort: (a, b) => a.datasetIndex - b.datasetIndex,
          },
        },
        tooltip: {
          filter: (item) => item.datasetIndex !== 3,
          callbacks: {
            title: (items) => {
              const ref = items.length ? items[0].raw.reference : null;
              if (ref) return `FP (no quantization) · K=${ref.steps}`;
              const c = items.length ? state.candidates.get(items[0].raw.key) : null;
              return c ? `${c.bits} · K=${c.steps}${c.is_baseline ? " · uniform baseline" : ""}` : "";
            },
            label: (item) => {
              const ref = item.raw.reference;
              if (ref) return referenceLines(state, ref);
              const c = state.candidates.get(item.raw.key);
              if (!c) return "";
              return [
                `${objectiveOf(state.job.spec, "quality")}: ${fmtNumber(c.quality)}`,
                `cost: ${fmtBitOps(c.bitops)}`,
                `weights: ${fmtBytes(c.weight_bytes)}`,
              ];
            },
            footer: (items) => {
              const ref = items.length ? items[0].raw.reference : null;
              if (ref) return [`t = ${ref.timesteps.join(", ")}`, "the error of these steps alone"];
              const c = items.length ? state.candidates.get(items[0].raw.key) : null;
              if (!c) return "";
              const ts = c.candidate.timesteps || [];
              const shown = ts.length > 12 ? `${ts.slice(0, 12).join(", ")}, …` : ts.join(", ");
              return [`t = ${shown}`, `key ${c.key} · gen ${c.generation}${c.non_dominated ? " · front" : ""}`];
            },
          },
        },
      },
      onClick: (_event, elements) => {
        const hit = elements.find((e) => e.datasetIndex !== 3 && e.datasetIndex !== 4);
        if (hit) select(state, chart.data.datasets[hit.datasetIndex].data[hit.index].key);
      },
    },
    plugins: [budgetLinePlugin],
  });

  function render() {
    const all = [...state.candidates.values()].filter(plottable);
    const front = all.filter((c) => c.non_dominated).sort((a, b) => a.bitops - b.bitops);
    const baselines = all.filter((c) => c.is_baseline);
    const others = all.filter((c) => !c.non_dominated && !c.is_baseline);
    const [frontSet, baseSet, otherSet, selSet, refSet] = chart.data.datasets;
    refSet.data = (state.fpReferences || [])
      .filter((r) => isNum(r.bitops) && isNum(r.quality) && r.bitops > 0)
      .map((r) => ({ x: r.bitops / 1e9, y: r.quality, key: r.key, reference: r }));
    frontSet.data = front.map(point);
    baseSet.data = baselines.map(point);
    otherSet.data = others.map(point);
    const selected = state.selected ? state.candidates.get(state.selected) : null;
    selSet.data = selected && plottable(selected) ? [point(selected)] : [];
    const positive = all.every((c) => c.quality > 0);
    chart.options.scales.y.type = positive ? "logarithmic" : "linear";
    const objective = objectiveOf(state.job.spec);
    chart.options.scales.y.title.text = `${QUALITY_LABELS[objective] || objective}${positive ? ", log scale" : ""}`;
    chart.options.plugins.budgetLine.value = state.budget;
    chart.options.scales.x.display = all.length > 0;
    chart.options.scales.y.display = all.length > 0;
    chart.update("none");

    const box = $("pareto");
    box.dataset.points = String(all.length);
    box.dataset.frontPoints = String(front.length);
    box.dataset.baselinePoints = String(baselines.length);
    box.dataset.evaluatedPoints = String(others.length);
    box.dataset.selected = selected ? selected.key : "";
    $("pareto-empty").hidden = all.length > 0;
    const unplotted = state.candidates.size - all.length;
    $("pareto-caption").textContent = all.length
      ? `${all.length} candidates plotted: ${front.length} on the front, ${baselines.length} uniform baselines` +
        (unplotted ? `; ${unplotted} failed or unmeasured not shown` : "") +
        ". Hover a point for details, click to select it."
      : "";
  }

  return { chart, render };
}

// -- hypervolume -----------------------------------------------------------------------------------------

function makeHypervolumeChart() {
  return new Chart($("hypervolume-canvas"), {
    type: "line",
    data: {
      datasets: [
        {
          label: "Hypervolume",
          data: [],
          borderColor: "#059669",
          backgroundColor: "rgba(5, 150, 105, 0.12)",
          fill: true,
          pointRadius: 3,
          tension: 0,
        },
      ],
    },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      parsing: false,
      interaction: { mode: "index", intersect: false },
      scales: {
        x: { type: "linear", title: { display: true, text: "generation" }, ticks: { precision: 0 } },
        y: { title: { display: true, text: "hypervolume" } },
      },
      plugins: {
        legend: { display: false },
        tooltip: {
          callbacks: {
            title: (items) => `generation ${items[0].raw.x}`,
            label: (item) => `hypervolume ${fmtNumber(item.raw.y)}`,
            afterLabel: (item) => `${item.raw.evaluated} evaluated, ${item.raw.front} on the front`,
          },
        },
      },
    },
  });
}

function renderHypervolume(state, chart) {
  chart.data.datasets[0].data = state.hypervolume.map((p) => ({
    x: p.generation,
    y: p.hypervolume,
    evaluated: p.evaluated,
    front: p.front_size,
  }));
  chart.options.scales.x.display = state.hypervolume.length > 0;
  chart.options.scales.y.display = state.hypervolume.length > 0;
  chart.update("none");
  $("hypervolume").dataset.points = String(state.hypervolume.length);
  $("hypervolume-empty").hidden = state.hypervolume.length > 0;
}

// -- the selected candidate ------------------------------------------------------------------------------

function tagsOf(state, c) {
  const tags = [];
  if (c.non_dominated) tags.push(h("span", { class: "tag front" }, "front"));
  if (c.key === state.knee) tags.push(h("span", { class: "tag knee" }, "knee"));
  if (c.is_baseline) tags.push(h("span", { class: "tag baseline" }, "baseline"));
  if (isNum(state.budget) && isNum(c.bitops) && c.bitops > state.budget) tags.push(h("span", { class: "tag over" }, "over budget"));
  if (c.error || !c.feasible) tags.push(h("span", { class: "tag failed", title: c.error || "" }, "failed"));
  return tags;
}

function renderSelection(state) {
  const c = state.selected ? state.candidates.get(state.selected) : null;
  $("selection-empty").hidden = Boolean(c);
  $("selection-body").hidden = !c;
  if (!c) return;
  $("sel-key").textContent = c.key;
  $("sel-tags").replaceChildren(...tagsOf(state, c));
  const objective = objectiveOf(state.job.spec);
  const rows = [
    ["Bits", c.bits],
    ["Steps (K)", String(c.steps)],
    [objective.toUpperCase(), fmtNumber(c.quality)],
    ["Cost", fmtBitOps(c.bitops)],
    ...measuredRows(c),
    ...(isNum(c.latency_ms) ? [["Latency", `${fmtNumber(c.latency_ms)} ms (${latencyBackendOf(state.job.spec)})`]] : []),
    ["Weights", fmtBytes(c.weight_bytes)],
    ["Generation", String(c.generation)],
    ...errorRows(state, c).map(([k, v]) => [k, v]),
  ];
  for (const [name, value] of Object.entries(c.objectives || {})) {
    if (["quality", "bitops", "weight_bytes", "steps", "latency_ms"].includes(name)) continue;
    rows.push([name, fmtNumber(value)]);
  }
  if (c.error) rows.push(["Error", c.error]);
  $("sel-metrics").replaceChildren(...rows.flatMap(([k, v, title]) => [h("dt", {}, k), h("dd", title ? { title } : {}, v)]));
  $("sel-timesteps").replaceChildren(...(c.candidate.timesteps || []).map((t) => h("span", { class: "ts" }, t)));
  const w = c.candidate.weight_bits || {};
  const a = c.candidate.act_bits || {};
  $("sel-sites").replaceChildren(
    h("thead", {}, h("tr", {}, h("th", {}, "Site"), h("th", { class: "num" }, "W"), h("th", { class: "num" }, "A"))),
    h("tbody", {}, Object.keys(w).map((site) =>
      h("tr", {}, h("td", {}, h("code", {}, site)), h("td", { class: "num" }, w[site]), h("td", { class: "num" }, a[site])))),
  );
  $("export-command").textContent = exportCommand(state.job.id, c.key);
  $("copy-status").textContent = "";
  $("export-button").dataset.key = c.key;
}

// -- the candidate table ---------------------------------------------------------------------------------

function renderTable(state) {
  const all = [...state.candidates.values()];
  let rows = all;
  if (state.filter === "front") rows = rows.filter((c) => c.non_dominated);
  else if (state.filter === "baseline") rows = rows.filter((c) => c.is_baseline);
  else if (state.filter === "failed") rows = rows.filter((c) => c.error || !c.feasible);
  if (state.withinBudget && isNum(state.budget)) rows = rows.filter((c) => isNum(c.bitops) && c.bitops <= state.budget);
  if (state.search) rows = rows.filter((c) => c.key.includes(state.search) || c.bits.toLowerCase().includes(state.search));
  const { key, dir } = state.sort;
  rows = [...rows].sort((x, y) => {
    const a = x[key];
    const b = y[key];
    const missingA = a === null || a === undefined;
    const missingB = b === null || b === undefined;
    if (missingA || missingB) return missingA === missingB ? x.seq - y.seq : missingA ? 1 : -1;
    const order = typeof a === "string" ? a.localeCompare(b) : a - b;
    return order === 0 ? x.seq - y.seq : order * dir;
  });
  for (const th of document.querySelectorAll("#cand-table th[data-sort]")) {
    th.classList.toggle("sorted", th.dataset.sort === key);
    th.dataset.dir = th.dataset.sort === key ? (dir > 0 ? "asc" : "desc") : "";
  }
  const shown = rows.slice(0, state.rows);
  const body = $("cand-body");
  body.replaceChildren(
    ...shown.map((c) =>
      h(
        "tr",
        {
          class: `clickable${c.key === state.selected ? " selected" : ""}${isNum(state.budget) && isNum(c.bitops) && c.bitops > state.budget ? " over" : ""}`,
          dataset: { key: c.key },
          onclick: () => select(state, c.key),
        },
        h("td", { class: "num muted" }, c.seq),
        h("td", {}, h("code", { title: c.key }, c.key.slice(0, 12))),
        h("td", { class: "num" }, c.generation),
        h("td", { class: "num" }, c.steps),
        h("td", {}, c.bits),
        h("td", { class: "num" }, fmtNumber(c.quality)),
        h("td", { class: "num" }, fmtG(c.bitops)),
        h("td", { class: "num" }, fmtBytes(c.weight_bytes)),
        h("td", {}, tagsOf(state, c)),
        h(
          "td",
          {},
          h(
            "button",
            {
              type: "button",
              class: "btn small export-row",
              title: `Download candidate ${c.key} as a runnable quantized model (zip)`,
              onclick: (event) => {
                event.stopPropagation();
                select(state, c.key);
                downloadExport(state.job.id, c.key, event.currentTarget);
              },
            },
            "zip",
          ),
        ),
      ),
    ),
  );
  $("cand-table").dataset.rows = String(rows.length);
  $("cand-count").textContent = rows.length === all.length ? `${all.length}` : `${rows.length} of ${all.length}`;
  $("cand-empty").hidden = rows.length > 0;
  $("cand-more").hidden = rows.length <= shown.length;
}

// -- start -----------------------------------------------------------------------------------------------

async function main() {
  setupAuth();
  api("/version")
    .then((v) => {
      $("version").textContent = `v${v.version} · API ${v.api}`;
    })
    .catch(() => {});
  const match = /^\/jobs\/(\d+)\/?$/.exec(window.location.pathname);
  try {
    if (match) await jobView(Number(match[1]));
    else await jobListView();
    document.body.dataset.ready = "true";
  } catch (error) {
    showError(`Something went wrong: ${error.message}`);
    document.body.dataset.ready = "error";
    throw error;
  }
}

main();
