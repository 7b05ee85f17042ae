// The admin page in real headless Chromium against a real push-serve. Started by
// tests/browser.rs as: node tests/browser/admin.mjs HOST:PORT PASSWORD SCREENSHOT.png
// A wrong password is refused; the right one signs in (and survives a reload); the socket count
// follows a test page's socket; the online lookup finds it; a message sent from the form
// arrives on that socket byte for byte; the refusals panel lists the wrong sign-in; then a
// screenshot of the dashboard with some traffic. Exits 0 and prints "admin page: ok" when all
// held; prints what went wrong otherwise.
import { chromium } from "playwright-core";
import http from "node:http";

const [server, password, screenshot] = process.argv.slice(2);
const [host, port] = server.split(":");
const base = `http://${server}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });

function request(method, target, body) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host, port, method, path: target, agent, headers: { authorization: `Bearer ${password}` } },
      (res) => {
        let data = "";
        res.setEncoding("utf8");
        res.on("data", (c) => (data += c));
        res.on("end", () => resolve({ status: res.statusCode, json: JSON.parse(data) }));
      },
    );
    req.on("error", reject);
    if (body) req.write(JSON.stringify(body));
    req.end();
  });
}

// Waits until `read()` (run in `page`) returns something `ok` accepts; returns it.
async function until(what, page, read, ok, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await page.evaluate(read);
    if (ok(last)) return last;
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what}; last saw ${JSON.stringify(last)}`);
}
const text = (id) => `document.getElementById(${JSON.stringify(id)}).textContent`;
const visible = (id) => `!document.getElementById(${JSON.stringify(id)}).classList.contains("hidden")`;

// A user's page with real browser WebSockets for `uid`, collecting the frames they receive.
async function userPage(browser, uid, sockets) {
  const page = await browser.newPage();
  const key = (await request("GET", `/access?uid=${uid}`)).json.contents;
  await page.goto(`${base}/health`); // any page of this origin
  await page.evaluate(({ url, sockets }) => {
    window.got = [];
    window.open = 0;
    for (let i = 0; i < sockets; i++) {
      const ws = new WebSocket(url);
      ws.onopen = () => window.open++;
      ws.onmessage = (e) => window.got.push(e.data);
    }
  }, { url: `ws://${server}/ws?uid=${uid}&access_key=${encodeURIComponent(key)}`, sockets });
  await until(`${uid}'s sockets to open`, page, "window.open", (n) => n === sockets);
  return page;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let failure = null;
const pageErrors = [];
try {
  const admin = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  // Any script error or CSP violation (an inline script or style the policy does not allow)
  // fails the test; Chromium also logs the deliberate wrong sign-in's 401, which is expected.
  const expected401 = "Failed to load resource: the server responded with a status of 401 (Unauthorized)";
  admin.on("console", (m) => { if (m.type() === "error" && m.text() !== expected401) pageErrors.push(m.text()); });
  admin.on("pageerror", (e) => pageErrors.push(String(e)));
  await admin.goto(`${base}/admin`);

  // A wrong password is refused and the page says so.
  await admin.fill("#password", "not-the-password");
  await admin.click("#signin-button");
  await until("the wrong password to be refused", admin, text("signin-error"), (t) => t === "Wrong password.");

  // The right one opens the dashboard, which shows no socket yet.
  await admin.fill("#password", password);
  await admin.click("#signin-button");
  await until("the dashboard", admin, visible("dashboard"), (v) => v);
  await until("0 sockets", admin, text("sockets-now"), (t) => t === "0");
  // The password stays for this tab: a reload needs no sign-in.
  await admin.reload();
  await until("the dashboard after a reload", admin, visible("dashboard"), (v) => v);

  // A user's page connects: the count follows.
  const user = await userPage(browser, "admin-test", 1);
  await until("1 socket", admin, text("sockets-now"), (t) => t === "1");
  await admin.fill("#online-uid", "admin-test");
  await admin.click("#online-check");
  await until("the online lookup", admin, text("online-result"), (t) => t === "admin-test is online with 1 socket");

  // A push from the form reaches the user's socket, contents byte for byte (spacing, and an
  // integer beyond what a JS number holds).
  await admin.selectOption("#push-target", "push");
  await admin.fill("#push-uid", "admin-test");
  await admin.fill("#push-topic", "greeting");
  await admin.fill("#push-contents", '{"hello": "from the admin page", "n": 12345678901234567890}');
  await admin.click("#push-send");
  await until("the push reply", admin, text("push-result"), (t) => t === "sent: 1 socket reached");
  const frames = await until("the frame on the user's socket", user, "window.got", (g) => g.length >= 1);
  const expected = '{"topic":"greeting","number":1,"contents":{"hello": "from the admin page", "n": 12345678901234567890}}';
  if (frames[0] !== expected) throw new Error(`the socket got ${frames[0]}, expected ${expected}`);
  // Broadcast too.
  await admin.selectOption("#push-target", "broadcast");
  await admin.fill("#push-topic", "notice");
  await admin.fill("#push-contents", '"maintenance at 2am"');
  await admin.click("#push-send");
  await until("the broadcast reply", admin, text("push-result"), (t) => t === "sent: 1 socket reached");
  await until("the broadcast frame", user, "window.got", (g) => g[1] === '{"topic":"notice","number":1,"contents":"maintenance at 2am"}');
  // The wrong sign-in is listed among the refusals.
  await until("the refusal by reason", admin, "document.getElementById('refusals-by-reason').innerText", (t) => /bad_password\s+1/.test(t));
  await until("the recent refusal", admin, "document.getElementById('refusals-recent').innerText", (t) => t.includes("bad_password") && t.includes("/admin") && t.includes("127.0.0.1"));

  // Some traffic for the charts: more tabs, a few seconds of pushes. The form is left showing a
  // push, as a reader of the screenshot would use it.
  await admin.selectOption("#push-target", "push");
  await admin.fill("#push-contents", '{"order": 7, "status": "shipped"}');
  await admin.fill("#push-topic", "order");
  const crowd = await userPage(browser, "crowd", 24);
  for (let second = 0; second < 8; second++) {
    const n = 20 + 15 * second;
    await Promise.all(Array.from({ length: n }, (_, i) => request("POST", "/push?uid=crowd", { topic: "tick", contents: i })));
    await sleep(1000);
  }
  await until("25 sockets", admin, text("sockets-now"), (t) => t === "25");
  await until("the charts drawn", admin, "document.querySelectorAll('svg.chart path').length", (n) => n === 3);
  await until("a push rate", admin, text("pushes-now"), (t) => Number(t) > 0);
  await admin.evaluate(() => document.activeElement.blur());
  await admin.screenshot({ path: screenshot, fullPage: true });
  await crowd.close();

  // Contents that are not JSON are caught in the page.
  await admin.fill("#push-contents", "{oops");
  await admin.click("#push-send");
  await until("the JSON check", admin, text("push-result"), (t) => t.startsWith("contents is not JSON"));

  // Signing out forgets the password.
  await admin.click("#signout");
  await until("the sign-in form", admin, visible("signin"), (v) => v);
  const kept = await admin.evaluate(() => sessionStorage.length);
  if (kept !== 0) throw new Error("the password stayed in sessionStorage after signing out");
  await user.close();
  if (pageErrors.length) throw new Error(`errors in the admin page: ${pageErrors.join("; ")}`);
} catch (e) {
  failure = e.stack || String(e);
} finally {
  await browser.close();
  agent.destroy();
}
if (failure) { console.error("FAILED:", failure); process.exit(1); }
console.log("admin page: ok");
