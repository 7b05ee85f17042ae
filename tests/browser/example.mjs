// examples/page.html as a person would use it: examples/backend.py serves the page and hands it
// access keys, the page loads the client library from push-serve's /push-serve.js, shows its
// connection state, and lists a push the backend makes. Started by tests/browser.rs as:
//   node tests/browser/example.mjs PAGE_URL
// (the backend and push-serve are already running). Exits 0 when all of that was seen.
import { chromium } from "playwright-core";

const [pageUrl] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let failure = null;
try {
  const page = await browser.newPage();
  page.on("console", (m) => { if (m.type() === "error") console.error("page:", m.text()); });
  await page.goto(pageUrl);
  await page.waitForFunction(() => document.getElementById("state").className === "connected",
    null, { timeout: 10000 });
  const state = await page.textContent("#state");
  if (!state.includes("connected as demo-user")) failure = `state shows ${JSON.stringify(state)}`;
  await page.click("#push");
  await page.waitForFunction(() => [...document.querySelectorAll("#log li.message")]
    .some((li) => li.textContent.includes("hello from the backend")), null, { timeout: 10000 });
  const log = await page.$$eval("#log li", (lis) => lis.map((li) => li.textContent));
  console.log(JSON.stringify({ state, log }));
  if (!log.some((l) => l.includes("new access key (#1)"))) failure = "the page never fetched a key from its backend";
} catch (e) {
  failure = e.stack || String(e);
} finally {
  await browser.close();
}
if (failure) { console.error("FAILED:", failure); process.exit(1); }
console.log("example page: ok");
