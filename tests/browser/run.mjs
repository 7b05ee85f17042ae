// Real headless Chromium runs client/push-serve.js against a real push-serve, through a TCP
// relay that this script cuts for 2 s at a time while messages are pushed. Started by
// tests/browser.rs as: node tests/browser/run.mjs HOST:PORT PASSWORD
// Exits 0 when the page received every message once, in order, refreshed its expired key, and
// dispatched topic messages to on(topic); prints what went wrong otherwise.
import { chromium } from "playwright-core";
import net from "node:net";
import http from "node:http";

const [server, password] = process.argv.slice(2);
const [host, port] = server.split(":");
const TOTAL = 1500;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function request(method, target, body) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host, port, method, path: target, agent: keepAlive, headers: { authorization: `Bearer ${password}` } },
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
const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 1 });

// The page's network: a relay we can cut.
let down = false;
const live = new Set();
const relay = net.createServer((client) => {
  if (down) return client.destroy();
  const upstream = net.connect(Number(port), host);
  const pair = { client, upstream };
  live.add(pair);
  client.pipe(upstream).pipe(client);
  const end = () => { client.destroy(); upstream.destroy(); live.delete(pair); };
  client.on("error", end); upstream.on("error", end); client.on("close", end); upstream.on("close", end);
});
await new Promise((r) => relay.listen(0, "127.0.0.1", r));
const relayPort = relay.address().port;
function cut() { down = true; for (const { client, upstream } of live) { client.destroy(); upstream.destroy(); } live.clear(); }

let keyFetches = 0;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let failure = null;
try {
  const page = await browser.newPage();
  page.on("console", (m) => { if (m.type() === "error") console.error("page:", m.text()); });
  await page.exposeFunction("fetchKey", async () => {
    keyFetches++;
    const r = await request("GET", "/access?uid=page&topics=news");
    return r.json.contents;
  });
  await page.exposeFunction("fetchKeyFor", async (uid) => (await request("GET", `/access?uid=${uid}`)).json.contents);
  await page.setContent("<!doctype html><title>push-serve client test</title><body></body>");
  // The library as push-serve serves it (GET /push-serve.js), as a real page loads it.
  await page.addScriptTag({ url: `http://${host}:${port}/push-serve.js` });
  await page.evaluate((url) => {
    window.got = []; window.gaps = []; window.news = []; window.opens = 0;
    const push = new PushServe({ url, uid: "page", getAccessKey: () => window.fetchKey(), minDelay: 200, maxDelay: 1000 });
    push.on("n", (contents) => window.got.push(contents));
    push.on("news", (contents) => window.news.push(contents));
    push.on("_gap", (gap) => window.gaps.push(gap));
    push.on("open", () => window.opens++);
    push.start();
  }, `ws://127.0.0.1:${relayPort}/ws`);

  const online = async () => (await request("GET", "/online?uid=page")).json.number;
  for (let i = 0; (await online()) < 1; i++) {
    if (i > 200) throw new Error("the page never connected");
    await sleep(50);
  }
  await request("POST", "/publish", { topic: "news", contents: { headline: "hello" } });

  // Two outages of 2 s while 1,500 messages are pushed at about 300/s. The server's key
  // lifetime is 3 s, so the page's first key has expired by its second reconnect.
  const outages = (async () => {
    for (let k = 0; k < 2; k++) {
      await sleep(1200);
      cut();
      await sleep(2000);
      down = false;
    }
  })();
  for (let i = 1; i <= TOTAL; i++) {
    const r = await request("POST", "/push?uid=page", { topic: "n", contents: i });
    if (r.status !== 200 && r.status !== 404) throw new Error(`push ${i}: ${r.status}`);
    if (i % 10 === 0) await sleep(30);
  }
  await outages;
  for (let i = 0; (await page.evaluate(() => window.got.length)) < TOTAL; i++) {
    if (i > 600) break;
    await sleep(50);
  }
  const { got, gaps, news, opens } = await page.evaluate(() => ({
    got: window.got, gaps: window.gaps, news: window.news, opens: window.opens,
  }));
  const inOrder = got.length === TOTAL && got.every((v, i) => v === i + 1);
  console.log(JSON.stringify({ received: got.length, inOrder, gaps: gaps.length, opens, keyFetches, news }));
  if (!inOrder) failure = `expected 1..${TOTAL} once each in order, got ${got.length} (first wrong at ${got.findIndex((v, i) => v !== i + 1)})`;
  else if (gaps.length) failure = `unexpected gaps ${JSON.stringify(gaps)}`;
  else if (opens < 3) failure = `expected reconnects after the outages, saw ${opens} opens`;
  else if (keyFetches < 2) failure = `the expired key was never refreshed (${keyFetches} fetches)`;
  else if (JSON.stringify(news) !== JSON.stringify([{ headline: "hello" }])) failure = `topic dispatch: ${JSON.stringify(news)}`;
  if (!failure) failure = await stopThenStart(page);
  if (!failure) failure = await sseFallback(browser);
} catch (e) {
  failure = e.stack || String(e);
} finally {
  await browser.close();
  relay.close();
  keepAlive.destroy();
}
if (failure) { console.error("FAILED:", failure); process.exit(1); }

// stop() then start() at once: the first socket's close event arrives after the second socket
// opened, and must not start a third (which would leave the page with two live sockets).
async function stopThenStart(page) {
  const made = await page.evaluate(async (url) => {
    let made = 0;
    let closes = 0;
    class Counting extends WebSocket {
      constructor(u) { super(u); made++; this.addEventListener("close", () => closes++); }
    }
    const push = new PushServe({ url, uid: "restart", WebSocket: Counting, minDelay: 50, maxDelay: 100,
      getAccessKey: () => window.fetchKeyFor("restart") });
    const opened = () => new Promise((resolve) => { const h = () => { push.off("open", h); resolve(); }; push.on("open", h); });
    push.start();
    await opened();
    push.stop();
    push.start();
    await opened();
    while (closes < 1) await new Promise((r) => setTimeout(r, 10));
    // The stale close has been handled. A client that reconnects from it does so within
    // maxDelay (100 ms); waiting five times that is the only way to see that nothing happens.
    await new Promise((r) => setTimeout(r, 500));
    window.restart = push;
    return made;
  }, `ws://${host}:${port}/ws`);
  const sockets = (await request("GET", "/online?uid=restart")).json.number;
  console.log(JSON.stringify({ stopThenStart: { made, sockets } }));
  if (made !== 2 || sockets !== 1) return `stop() then start(): ${made} sockets made, ${sockets} open on the server (want 2 and 1)`;
  return null;
}
console.log("browser client: ok");


// A network that refuses WebSocket upgrades but passes plain HTTP (a proxy that strips
// Upgrade): the client must fall back to the event stream (/sse) and, through a cut connection,
// still get every message once, in order.
async function sseFallback(browser) {
  const TOTAL = 300;
  const hidden = new Set();
  let blocked = 0;
  const proxy = net.createServer((client) => {
    client.once("data", (first) => {
      if (/\r\nupgrade:\s*websocket/i.test(first.toString("latin1"))) {
        blocked++;
        client.end("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
      }
      const upstream = net.connect(Number(port), host);
      const pair = { client, upstream };
      hidden.add(pair);
      upstream.write(first);
      client.pipe(upstream).pipe(client);
      const end = () => { client.destroy(); upstream.destroy(); hidden.delete(pair); };
      client.on("error", end); upstream.on("error", end); client.on("close", end); upstream.on("close", end);
    });
  });
  await new Promise((r) => proxy.listen(0, "127.0.0.1", r));
  try {
    const page = await browser.newPage();
    page.on("console", (m) => { if (m.type() === "error" && !/WebSocket|net::ERR/.test(m.text())) console.error("page:", m.text()); });
    await page.exposeFunction("fallbackKey", async () => (await request("GET", "/access?uid=fallback")).json.contents);
    await page.setContent("<!doctype html><title>push-serve fallback test</title><body></body>");
    await page.addScriptTag({ url: `http://${host}:${port}/push-serve.js` });
    await page.evaluate((url) => {
      window.got = []; window.opens = []; window.closes = 0;
      const push = new PushServe({ url, uid: "fallback", getAccessKey: () => window.fallbackKey(), minDelay: 100, maxDelay: 400 });
      push.on("n", (contents) => window.got.push(contents));
      push.on("open", () => window.opens.push(push.transport));
      push.on("close", () => window.closes++);
      push.start();
      window.fallback = push;
    }, `ws://127.0.0.1:${proxy.address().port}/ws`);
    await page.waitForFunction(() => window.opens.length > 0, null, { timeout: 20000 });
    for (let i = 1; i <= TOTAL; i++) {
      if (i === 100) {
        // Cut the event stream; the client reconnects (over SSE) and resumes where it was.
        const closes = await page.evaluate(() => window.closes);
        for (const { client, upstream } of hidden) { client.destroy(); upstream.destroy(); }
        await page.waitForFunction((n) => window.closes > n, closes, { timeout: 10000 });
      }
      const r = await request("POST", "/push?uid=fallback", { topic: "n", contents: i });
      if (r.status !== 200 && r.status !== 404) throw new Error(`push ${i}: ${r.status}`);
    }
    await page.waitForFunction((n) => window.got.length >= n, TOTAL, { timeout: 30000 });
    const { got, opens, transport } = await page.evaluate(() =>
      ({ got: window.got, opens: window.opens, transport: window.fallback.transport }));
    const sockets = (await request("GET", "/online?uid=fallback")).json.number;
    console.log(JSON.stringify({ sseFallback: { received: got.length, opens, blocked, transport, sockets } }));
    const inOrder = got.length === TOTAL && got.every((v, i) => v === i + 1);
    if (!inOrder) return `SSE fallback: expected 1..${TOTAL} once each in order, got ${got.length}`;
    if (transport !== "sse" || opens.some((t) => t !== "sse") || opens.length < 2) return `SSE fallback: opens ${JSON.stringify(opens)}, transport ${transport}`;
    if (blocked !== 2) return `SSE fallback: ${blocked} WebSocket attempts before falling back (want 2)`;
    if (sockets !== 1) return `SSE fallback: ${sockets} sockets on the server (want 1)`;
    await page.close();
    return null;
  } finally {
    proxy.close();
    for (const { client, upstream } of hidden) { client.destroy(); upstream.destroy(); }
  }
}