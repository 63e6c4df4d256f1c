// A screenshot of the dashboard of a running host, for people to look at
// (the README's picture is made by `make screenshot`, which starts a host
// with the example handlers and runs this):
//   node tests/browser/screenshot.mjs http://127.0.0.1:PORT OUT.png
// It publishes a steady load through the API for ~20 s so the charts have
// a history, opens one event's detail view, and shoots the whole page.
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "../../tools/js/package.json"));
const { chromium } = require("playwright-core");

const [base, out] = process.argv.slice(2);
if (!base || !out) throw new Error("usage: screenshot.mjs BASE_URL OUT.png");
const token = process.env.PERSONA_BUS_HTTP_TOKEN;
const sleep = (ms) => new Promise((res) => setTimeout(res, ms));
const kinds = ["task_created", "custom", "webhook_received"];

async function publish(i) {
  const r = await fetch(`${base}/api/personas/events`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({
      event_type: kinds[i % kinds.length],
      source_type: "screenshot",
      project_id: `project-${i % 3}`,
      payload: { n: i, title: `task ${i}` },
    }),
  });
  if (r.status !== 201) throw new Error(`publish: ${r.status} ${await r.text()}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1440, height: 1100 } });
  await page.goto(base);
  await page.locator("#stream", { hasText: "live" }).waitFor({ timeout: 20000 });
  // A load that rises and falls, so the throughput chart has a shape.
  const started = Date.now();
  for (let i = 0; Date.now() - started < 20000; i++) {
    const phase = (Date.now() - started) / 20000;
    const burst = 1 + Math.round(8 * Math.sin(Math.PI * phase));
    await Promise.all(Array.from({ length: burst }, (_, k) => publish(i * 10 + k)));
    await sleep(100);
  }
  await sleep(2500);
  await page.locator("#event-rows tr").first().click();
  await page.locator("#detail-runs").waitFor({ timeout: 10000 });
  await page.screenshot({ path: out, fullPage: true });
  console.log(`wrote ${out}`);
} finally {
  await browser.close();
}
