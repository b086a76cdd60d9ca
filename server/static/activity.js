// What a running job is doing (its progress.activity), as one line: the same line as the CLI writes
// (server/cli_remote.py activity_text), e.g. "calibrating W6 (2/3): reconstruction 7/12, round 1, 1m20s elapsed, ~3m left".

const isNumber = (v) => typeof v === "number" && Number.isFinite(v);

/** "45s", "1m20s", "2h05m": an elapsed time (whole seconds, truncated). */
export function durationText(seconds) {
  const total = Math.max(0, Math.floor(seconds));
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const secs = total % 60;
  if (hours) return `${hours}h${String(minutes).padStart(2, "0")}m`;
  return minutes ? `${minutes}m${String(secs).padStart(2, "0")}s` : `${secs}s`;
}

/** "~45s", "~3m", "~1h05m": a time left, rounded half up (to minutes from one minute up). */
export function etaText(seconds) {
  const total = Math.max(0, Math.round(seconds));
  if (total < 60) return `~${total}s`;
  const minutes = Math.round(total / 60);
  const hours = Math.floor(minutes / 60);
  return hours ? `~${hours}h${String(minutes % 60).padStart(2, "0")}m` : `~${minutes}m`;
}

function calibrationText(c) {
  let head = "calibrating";
  if (isNumber(c.bits)) {
    head += ` W${Math.trunc(c.bits)}`;
    if (isNumber(c.bit_index) && isNumber(c.bit_count) && c.bit_count > 0) {
      head += ` (${Math.trunc(c.bit_index) + 1}/${Math.trunc(c.bit_count)})`;
    }
  }
  const parts = [];
  if (typeof c.phase === "string" && c.phase) {
    const counted = isNumber(c.step) && isNumber(c.total) && c.total > 0 && c.phase !== "done";
    parts.push(counted ? `${c.phase} ${Math.trunc(c.step)}/${Math.trunc(c.total)}` : c.phase);
  }
  if (isNumber(c.round) && c.round) parts.push(`round ${Math.trunc(c.round)}`);
  if (isNumber(c.elapsed_s)) parts.push(`${durationText(c.elapsed_s)} elapsed`);
  if (isNumber(c.eta_s)) parts.push(`${etaText(c.eta_s)} left`);
  return parts.length ? `${head}: ${parts.join(", ")}` : head;
}

/** One line for a job's progress.activity, or null when it reported nothing. */
export function activityText(activity) {
  if (!activity || typeof activity !== "object" || Array.isArray(activity)) return null;
  const c = activity.calibration;
  if (c && typeof c === "object" && c.source === "calibrating") return calibrationText(c);
  const { message, stage } = activity;
  if (typeof message === "string" && message.trim()) return message.trim().split(/\s+/).join(" ");
  return typeof stage === "string" && stage ? stage : null;
}

/** The activity line of a RUNNING job, else null. */
export function jobActivity(job) {
  return job && job.state === "RUNNING" && job.progress ? activityText(job.progress.activity) : null;
}

/** One line for a job's calibrated supernet (its `calibration` summary), or null: the same line as the CLI writes
 * (server/cli_remote.py supernet_text), e.g. "calibrated in 1m52s (estimated ~2m) · W4A4 20.1 dB · W8A8 38.2 dB against
 * FP at 10 steps · worst at W4: up_blocks.1 · range check passed". */
export function supernetText(summary) {
  if (!summary || typeof summary !== "object" || Array.isArray(summary)) return null;
  const source = summary.source;
  const seconds = Object.values(summary.seconds || {}).filter(isNumber);
  let head;
  if (source === "calibrated" && seconds.length) {
    head = `calibrated in ${durationText(seconds.reduce((a, b) => a + b, 0))}`;
    if (isNumber(summary.estimate_s)) head += ` (estimated ${etaText(summary.estimate_s)})`;
  } else {
    head = typeof source === "string" && source ? `from the ${source}` : "supernet";
  }
  const parts = [head];
  const report = summary.report;
  if (report && typeof report === "object" && typeof report.skipped === "string") {
    parts.push(`no report: ${report.skipped}`);
  } else if (report && typeof report === "object" && report.bits && typeof report.bits === "object") {
    const rows = Object.entries(report.bits)
      .filter(([b, r]) => /^[0-9]+$/.test(b) && r && typeof r === "object")
      .map(([b, r]) => [Number(b), r])
      .sort((x, y) => x[0] - y[0]);
    const quality = rows.filter(([, r]) => isNumber(r.psnr)).map(([b, r]) => `W${b}A${b} ${r.psnr.toFixed(1)} dB`);
    if (quality.length) {
      parts.push(quality.join(" · ") + (isNumber(report.steps) ? ` against FP at ${report.steps} steps` : ""));
    }
    for (const [b, r] of rows.slice(0, 1)) {
      if (Array.isArray(r.worst) && r.worst.length && r.worst[0] && typeof r.worst[0] === "object") {
        parts.push(`worst at W${b}: ${r.worst[0].name}`);
      }
    }
    const check = report.range_check;
    if (check && typeof check === "object" && typeof check.passed === "boolean") {
      parts.push(check.passed ? "range check passed" : "range check FAILED");
    }
  } else {
    parts.push("no calibration report");
  }
  return parts.join(" · ");
}
