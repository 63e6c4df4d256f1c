// The dashboard in a real browser: headless Chromium (Debian's) driven by
// playwright-core. Run by tests/all/browser.rs against a live host:
//   node tests/browser/dashboard.mjs http://127.0.0.1:PORT
// 1. publish an event through the API; see it appear and turn completed;
// 2. publish one a handler traps on; retry its dead letter from the page.
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "../../tools/js/package.json"));
const { chromium } = require("playwright-core");

const base = process.argv[2];
if (!base) throw new Error("usage: dashboard.mjs BASE_URL");
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

async function publish(event_type) {
  const r = await fetch(`${base}/api/personas/events`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ event_type, source_type: "browser-test", project_id: "ui" }),
  });
  if (r.status !== 201) throw new Error(`publish ${event_type}: ${r.status} ${await r.text()}`);
  return (await r.json()).event_id;
}

const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
try {
  const page = await browser.newPage();
  await page.goto(base);
  await page.locator("#stream", { hasText: "live" }).waitFor({ timeout: 15000 });

  // 1. A new event appears and turns completed, live.
  const id = await publish("task_created");
  const row = page.locator(`tr[data-id="${id}"]`);
  await row.waitFor({ timeout: 15000 });
  await row.locator(".status", { hasText: "completed" }).waitFor({ timeout: 15000 });
  console.log(`event ${id} appeared and completed`);

  // 2. A dead letter appears; its retry button sends it back.
  const boom = await publish("boom");
  await row.page().locator(`tr[data-id="${boom}"] .status`, { hasText: "dead_letter" }).waitFor({ timeout: 15000 });
  // The list is redrawn as notices arrive, so a click can land on a row
  // just replaced: click, check the API, click again if need be.
  const letters = async () => {
    const r = await fetch(`${base}/api/personas/dead-letters?limit=50`);
    return (await r.json()).dead_letters;
  };
  let letter;
  for (let i = 0; !letter; i++) {
    if (i > 150) throw new Error("no dead letter for the trapped event");
    letter = (await letters()).find((d) => d.event_id === boom);
    if (!letter) await new Promise((res) => setTimeout(res, 100));
  }
  // (The handler traps again after the retry: that is a new letter.)
  const retried = async () => !(await letters()).some((d) => d.id === letter.id && d.retried_at === null);
  for (let attempt = 0; !(await retried()); attempt++) {
    if (attempt > 20) throw new Error("the retry button did not retry the dead letter");
    const button = page.locator(`#dlq-rows button[data-retry="${letter.id}"]`);
    await button.waitFor({ timeout: 15000 });
    await button.click();
    for (let i = 0; i < 20 && !(await retried()); i++) {
      await new Promise((res) => setTimeout(res, 100));
    }
  }
  await page.locator("#dlq-rows tr").first().waitFor({ timeout: 15000 });
  console.log(`dead letter of ${boom} retried from the page`);
} finally {
  await browser.close();
}
