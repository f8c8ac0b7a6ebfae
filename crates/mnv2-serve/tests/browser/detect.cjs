// The page's boxes and mask, end to end, in headless Chromium (Debian's `chromium`, driven by
// `playwright-core`), against a server started with --detector (the real SSDLite person
// detector) and --segmenter: upload astronaut.png, a "person" box must be listed and drawn
// over the photo, and the segmentation mask drawn with its classes listed. Then with the mask
// off, the boxes alone (screenshot serve-detect.png in the given directory).
//
// Usage: node detect.cjs URL PHOTO OUT_DIR   (PLAYWRIGHT_CORE: the package's directory)

"use strict";
const path = require("path");
const { chromium } = require(process.env.PLAYWRIGHT_CORE || "playwright-core");

const [url, photo, outDir] = process.argv.slice(2);
if (!url || !photo || !outDir) {
  console.error("usage: node detect.cjs URL PHOTO OUT_DIR");
  process.exit(2);
}

const FLAGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

async function main(browser) {
  const failed = [];
  const page = await (await browser.newContext()).newPage();
  await page.setViewportSize({ width: 1000, height: 800 });
  page.on("request", (r) => { if (!r.url().startsWith(url) && !/^(blob|data):/.test(r.url())) failed.push("external request: " + r.url()); });
  page.on("pageerror", (e) => failed.push("page error: " + e.message));
  await page.goto(url, { waitUntil: "load", timeout: 15000 });
  await page.locator("body[data-models]").waitFor({ timeout: 15000 });
  for (const id of ["want-detect", "want-segment"]) {
    if (!(await page.locator("#" + id).isChecked())) failed.push(`#${id} is not offered although the server has the model`);
  }
  await page.setInputFiles("#file", photo);
  const person = page.locator("#detections li", { hasText: "person" }).first();
  await person.waitFor({ timeout: 60000 });
  await page.locator("#overlay[data-mask='1']").waitFor({ timeout: 60000 });
  await page.locator("#status", { hasText: "Latency" }).waitFor({ timeout: 60000 });
  const text = (await person.textContent()).trim();
  const boxes = Number(await page.locator("#overlay").getAttribute("data-boxes"));
  const segs = await page.locator("#segments li").count();
  if (!(boxes >= 1)) failed.push(`${boxes} boxes drawn on the overlay`);
  if (!/person \[\d+, \d+, \d+, \d+\]\s*\d+\.\d%/.test(text)) failed.push(`person entry "${text}" has no box and score`);
  if (segs < 1) failed.push("no segmentation classes listed");
  // The overlay must actually hold drawn pixels (the box outline at least).
  const painted = await page.evaluate(() => {
    const c = document.getElementById("overlay");
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
    return n;
  });
  if (painted === 0) failed.push("the overlay canvas is empty");
  await page.screenshot({ path: path.join(outDir, "serve-detect-mask.png"), fullPage: true });
  console.log(`detect: ${text}; ${boxes} boxes, ${segs} mask classes, ${painted} overlay pixels painted`);
  // Boxes alone.
  await page.locator("#want-segment").uncheck();
  await page.locator("#overlay[data-mask='0'][data-boxes]").waitFor({ timeout: 60000 });
  await page.locator("#detections li", { hasText: "person" }).first().waitFor({ timeout: 60000 });
  await page.locator("#status", { hasText: "Latency" }).waitFor({ timeout: 60000 });
  const shot = path.join(outDir, "serve-detect.png");
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`boxes only: ${shot}`);
  return failed;
}

(async () => {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: FLAGS });
  let failed;
  try {
    failed = await main(browser);
  } finally {
    await browser.close();
  }
  if (failed.length) {
    for (const f of failed) console.error("FAIL: " + f);
    process.exit(1);
  }
  console.log("browser detect test: PASS");
})().catch((e) => { console.error("FAIL: " + e.message); process.exit(1); });
