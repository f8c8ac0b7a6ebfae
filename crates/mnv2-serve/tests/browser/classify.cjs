// The web page, end to end, in headless Chromium (Debian's `chromium`, driven by
// `playwright-core`): upload chelsea.png, "Egyptian cat" must appear with its probability,
// on a desktop-sized and on a phone-sized window. Screenshots go to the given directory.
//
// Usage: node classify.cjs URL PHOTO OUT_DIR   (PLAYWRIGHT_CORE: the package's directory)

"use strict";
const path = require("path");
const { chromium } = require(process.env.PLAYWRIGHT_CORE || "playwright-core");

const [url, photo, outDir] = process.argv.slice(2);
if (!url || !photo || !outDir) {
  console.error("usage: node classify.cjs URL PHOTO OUT_DIR");
  process.exit(2);
}

const FLAGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

async function check(context, name, viewport) {
  const page = await context.newPage();
  await page.setViewportSize(viewport);
  const failed = [];
  // Offline: every request the page makes must go to the server itself.
  page.on("request", (r) => { if (!r.url().startsWith(url) && !/^(blob|data):/.test(r.url())) failed.push("external request: " + r.url()); });
  page.on("pageerror", (e) => failed.push("page error: " + e.message));
  await page.goto(url, { waitUntil: "load", timeout: 15000 });
  // Classes only (a server with a segmenter would otherwise paint its mask on the screenshot).
  await page.locator("body[data-models]").waitFor({ timeout: 15000 });
  await page.evaluate(() => { for (const id of ["want-detect", "want-segment"]) document.getElementById(id).checked = false; });
  await page.setInputFiles("#file", photo);
  const row = page.locator("#results .row").first();
  await row.locator(".label", { hasText: "Egyptian cat" }).waitFor({ timeout: 20000 });
  const prob = (await row.locator(".prob").textContent()).trim();
  const status = (await page.locator("#status").textContent()).trim();
  const rows = await page.locator("#results .row").count();
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  if (!/^\d{1,3}\.\d%$/.test(prob)) failed.push(`probability "${prob}" is not a percentage`);
  const p = parseFloat(prob);
  if (!(p > 50 && p < 100)) failed.push(`Egyptian cat at ${prob}, expected the top class above 50%`);
  if (rows !== 5) failed.push(`${rows} result rows, expected 5`);
  if (!/^Latency \d+ ms/.test(status)) failed.push(`status "${status}" shows no latency`);
  if (width > viewport.width + 1) failed.push(`page is ${width}px wide in a ${viewport.width}px window (horizontal scroll)`);
  const shot = path.join(outDir, `serve-${name}.png`);
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`${name} ${viewport.width}x${viewport.height}: Egyptian cat ${prob}, ${status}; ${shot}`);
  await page.close();
  return failed;
}

(async () => {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: FLAGS });
  let failed = [];
  try {
    const context = await browser.newContext();
    failed = failed.concat(await check(context, "desktop", { width: 1000, height: 640 }));
    failed = failed.concat(await check(context, "phone", { width: 390, height: 844 }));
  } finally {
    await browser.close();
  }
  if (failed.length) {
    for (const f of failed) console.error("FAIL: " + f);
    process.exit(1);
  }
  console.log("browser test: PASS");
})().catch((e) => { console.error("FAIL: " + e.message); process.exit(1); });
