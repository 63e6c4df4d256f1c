// The dashboard in a real browser: headless Chromium (Debian's) driven by
// playwright-core. Run by tests/all/browser.rs against a live host whose
// mutating routes need the bearer token TOKEN:
//   node tests/browser/dashboard.mjs http://127.0.0.1:PORT TOKEN
// 1. events published through the API appear live and turn completed;
// 2. the charts draw points from /metrics (throughput, latency, errors,
//    dead letters), and the breaker timeline and alerts panel render;
// 3. the filters narrow the table by project, type and status;
// 4. the detail view shows payload, headers and every handler run;
// 5. a dead letter is retried from the page (the token is asked for once),
//    and another is purged;
// 6. a redrive by filter shows its count, then sends back that many;
// 7. a page opened later starts with the host's recent past in its charts;
// 8. a handler's page shows its versions and its shadow's tallies, and the
//    replays panel lists a finished replay with its progress.
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "../../tools/js/package.json"));
const { chromium } = require("playwright-core");

const [base, token] = process.argv.slice(2);
if (!base || !token) throw new Error("usage: dashboard.mjs BASE_URL TOKEN");
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const T = { timeout: 20000 };
const sleep = (ms) => new Promise((res) => setTimeout(res, ms));

async function publish(event_type, project_id = "ui", payload = {}) {
  const r = await fetch(`${base}/api/personas/events`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify({ event_type, source_type: "browser-test", project_id, payload }),
  });
  if (r.status !== 201) throw new Error(`publish ${event_type}: ${r.status} ${await r.text()}`);
  return (await r.json()).event_id;
}

async function letters() {
  const r = await fetch(`${base}/api/personas/dead-letters?limit=50`);
  return (await r.json()).dead_letters;
}

async function until(what, check, tries = 200) {
  for (let i = 0; i < tries; i++) {
    if (await check()) return;
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what}`);
}

const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const dialogs = [];
  page.on("dialog", async (d) => {
    dialogs.push(d.type());
    await (d.type() === "prompt" ? d.accept(token) : d.accept());
  });
  await page.goto(base);
  await page.locator("#stream", { hasText: "live" }).waitFor(T);

  // 1. New events appear and turn completed, live.
  const id = await publish("task_created", "ui", { title: "draw the charts", n: 7 });
  const row = page.locator(`tr[data-id="${id}"]`);
  await row.locator(".status", { hasText: "completed" }).waitFor(T);
  const other = await publish("task_created", "elsewhere");
  await page.locator(`tr[data-id="${other}"] .status`, { hasText: "completed" }).waitFor(T);
  console.log(`event ${id} appeared and completed`);

  // 2. Charts: points from at least two /metrics samples, drawn pixels.
  // A steady trickle, so every 2 s sample sees handled events.
  let pumping = true;
  const pump = (async () => {
    for (let i = 0; pumping; i++) {
      await publish("task_created", "load", { i });
      await sleep(250);
    }
  })();
  const boom = await publish("boom");
  for (const chart of ["c-throughput", "c-latency", "c-errors", "c-dead"]) {
    await page.waitForFunction((c) => Number(document.getElementById(c).dataset.points || 0) >= 2, chart, T);
  }
  const inked = await page.evaluate(() => {
    const c = document.getElementById("c-throughput");
    const px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 3; i < px.length; i += 4) if (px[i] > 0) n++;
    return n;
  });
  pumping = false;
  await pump;
  if (inked < 500) throw new Error(`the throughput chart drew ${inked} pixels`);
  const legend = await page.locator("#l-throughput").textContent();
  if (!legend.includes("published") || !legend.includes("handled")) throw new Error(`legend: ${legend}`);
  await page.locator("#timeline div").first().waitFor(T);
  await page.locator("#alert-rows tr").first().waitFor(T);
  console.log(`charts drew from /metrics (${inked} pixels on throughput)`);

  // 3. Filters.
  await page.fill("#f-project", "elsewhere");
  await until("the project filter", async () =>
    (await page.locator(`tr[data-id="${other}"]`).count()) === 1 && (await page.locator(`tr[data-id="${id}"]`).count()) === 0);
  await page.fill("#f-project", "");
  await page.selectOption("#f-status", "dead_letter");
  await until("the status filter", async () =>
    (await page.locator(`tr[data-id="${boom}"]`).count()) === 1 && (await page.locator(`tr[data-id="${id}"]`).count()) === 0);
  await page.selectOption("#f-status", "");
  await page.fill("#f-type", "task_created");
  await until("the type filter", async () =>
    (await page.locator(`tr[data-id="${id}"]`).count()) === 1 && (await page.locator(`tr[data-id="${boom}"]`).count()) === 0);
  await page.fill("#f-type", "");
  console.log("filters narrowed the table by project, status and type");

  // 4. Detail view of the first event: payload, headers, runs.
  // Rows are redrawn as notices arrive and as a filter reloads, so a click
  // can land on a row just replaced: click until the detail shows the event.
  const open = async (eid, handler) => {
    for (let attempt = 0; ; attempt++) {
      await page.locator(`tr[data-id="${eid}"]`).click();
      const runs = page.locator("#detail-runs td", { hasText: handler }).first();
      const shown = await runs.waitFor({ timeout: 3000 }).then(() => true, () => false);
      if (shown && (await page.locator("#detail-body dd").first().textContent()) === eid) return;
      if (attempt >= 6) throw new Error(`the detail of ${eid} never showed a ${handler} run`);
    }
  };
  await open(id, "audit");
  const payload = await page.locator("#detail-payload").textContent();
  if (!payload.includes("draw the charts")) throw new Error(`payload: ${payload}`);
  const runs = await page.locator("#detail-runs").textContent();
  if (!runs.includes("completed")) throw new Error(`runs: ${runs}`);
  await open(boom, "trap");
  const err = await page.locator("#detail-runs tr", { hasText: "trap" }).locator("td.err").first().textContent();
  if (!err.trim()) throw new Error("the trapped run shows no error");
  console.log(`detail view showed the payload and runs (trap: ${err.slice(0, 60)})`);

  // 5. Retry the dead letter from the page (401, token prompt, retried).
  let letter;
  await until("the dead letter", async () => (letter = (await letters()).find((d) => d.event_id === boom)));
  // The list is redrawn as notices arrive, so a click can land on a row
  // just replaced: click, check the API, click again if need be.
  const gone = (lid) => async () => !(await letters()).some((d) => d.id === lid && d.retried_at === null);
  for (let attempt = 0; !(await gone(letter.id)()); attempt++) {
    if (attempt > 20) throw new Error("the retry button did not retry the dead letter");
    const button = page.locator(`#dlq-rows button[data-retry="${letter.id}"]`);
    await button.waitFor(T);
    await button.click();
    await until("the retry", gone(letter.id), 20).catch(() => {});
  }
  if (!dialogs.includes("prompt")) throw new Error("the page never asked for the token");
  console.log(`dead letter of ${boom} retried from the page`);

  // The handler traps again after the retry: a new letter, which is purged.
  let again;
  await until("the second dead letter", async () =>
    (again = (await letters()).find((d) => d.event_id === boom && d.retried_at === null && d.id !== letter.id)));
  const purged = async () => !(await letters()).some((d) => d.id === again.id);
  for (let attempt = 0; !(await purged()); attempt++) {
    if (attempt > 20) throw new Error("the purge button did not purge the dead letter");
    const button = page.locator(`#dlq-rows button[data-purge="${again.id}"]`);
    await button.waitFor(T);
    await button.click();
    await until("the purge", purged, 20).catch(() => {});
  }
  if (!dialogs.includes("confirm")) throw new Error("the purge was not confirmed");
  console.log(`dead letter ${again.id} purged from the page`);

  // 6. Redrive by filter: the count first, then exactly that many.
  const third = await publish("boom");
  let fresh;
  await until("a dead letter to redrive", async () =>
    (fresh = (await letters()).find((d) => d.event_id === third && d.retried_at === null)));
  const waiting = (await letters()).filter((d) => d.handler === "trap" && d.retried_at === null).length;
  await page.fill('#redrive input[name="handler"]', "trap");
  await page.fill('#redrive input[name="error_contains"]', "TRAP");
  await page.click("#redrive-count");
  await page.locator("#redrive-note", { hasText: `${waiting} dead letters match` }).waitFor(T);
  await page.click("#redrive-go");
  await page.locator("#redrive-note", { hasText: `${waiting} sent back` }).waitFor(T);
  await until("the redrive", async () => (await letters()).some((d) => d.id === fresh.id && d.retried_at !== null));
  console.log(`${waiting} dead letter(s) redriven by filter after a count of ${waiting}`);

  // 7. A page opened now starts with the host's recent past: its charts
  //    have points before a second live sample could have come (2 s).
  const opened = Date.now();
  const later = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  await later.goto(base);
  await later.waitForFunction(() => Number(document.getElementById("c-throughput").dataset.points || 0) >= 4, null, { timeout: 1500 });
  const early = await later.evaluate(() => Number(document.getElementById("c-throughput").dataset.points));
  console.log(`a new page opened with ${early} throughput points of history in ${Date.now() - opened} ms`);
  await later.selectOption("#window", "60");
  await later.close();

  // 8. The handler page of audit (it has a shadow), and the replays panel.
  await page.locator('#handler-rows tr[data-handler="audit"]').click();
  await page.locator("#handler-page .shadow-tally").first().waitFor(T);
  const tally = await page.locator("#handler-page .shadow-tally").first().innerText();
  if (!tally.includes("0.2.0") || !tally.includes("0.1.0")) throw new Error(`shadow tally: ${tally}`);
  await page.locator("#handler-body", { hasText: "Runs by version" }).waitFor(T);
  console.log(`handler page showed the shadow beside the live version (${tally.replace(/\s+/g, " ")})`);
  await page.locator("#replay-rows tr.replay", { hasText: "finished" }).first().waitFor(T);
  const replay = await page.locator("#replay-rows tr.replay").first().innerText();
  if (!replay.includes("audit")) throw new Error(`replay row: ${replay}`);
  console.log(`replay listed with its progress (${replay.replace(/\s+/g, " ")})`);
} finally {
  await browser.close();
}
