// client/push-serve.js in headless Chromium with what issue 13 added: a page connecting with a
// JWT its backend minted (no call to push-serve), acking a push sent with a receipt after its
// handler returned (even one that throws), getting a message kept in its offline inbox first
// (and acking it), following a room the backend moved it into, and data pools: the snapshot of
// one its JWT grants, then its changes, and the snapshot of one the backend moved it into.
// Started by tests/browser.rs as: node tests/browser/seeds.mjs HOST:PORT PASSWORD JWT_SECRET
import { chromium } from "playwright-core";
import http from "node:http";
import crypto from "node:crypto";

const [server, password, jwtSecret] = process.argv.slice(2);
const [host, port] = server.split(":");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 1 });

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

// What a backend's JWT library does: base64url header and claims, HS256 over both.
function mintJwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const unsigned = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  const sig = crypto.createHmac("sha256", jwtSecret).update(unsigned).digest("base64url");
  return `${unsigned}.${sig}`;
}

async function until(what, check, tries = 400) {
  for (let i = 0; i < tries; i++) {
    const value = await check();
    if (value) return value;
    await sleep(25);
  }
  throw new Error(`timed out waiting for ${what}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let failure = null;
try {
  const page = await browser.newPage();
  const thrown = [];
  page.on("pageerror", (e) => thrown.push(String(e.message)));
  let minted = 0;
  await page.exposeFunction("backendJwt", async () => {
    minted++;
    return mintJwt({ uid: 71, exp: Math.floor(Date.now() / 1000) + 600, app: "shop", topics: ["cart:71"] });
  });
  // Offline inbox: a push kept for uid 71 before its page opens; the fresh page gets it first.
  const boxed = await request("POST", "/push?uid=71", { topic: "order", contents: { n: 0 }, inbox: 600 });
  if (boxed.status !== 200 || JSON.stringify(boxed.json.contents.inbox.kept) !== '["71"]') {
    throw new Error(`push with inbox: ${JSON.stringify(boxed)}`);
  }
  // A data pool the page's key grants, filled before it opens.
  const cart = await request("PUT", "/pool/cart:71", { items: ["tea"] });
  if (cart.status !== 200 || cart.json.contents.event !== "cart:71:add") throw new Error(`pool: ${JSON.stringify(cart)}`);
  await request("PUT", "/pool/lot:2", [10]);
  await page.setContent("<!doctype html><title>push-serve seeds test</title><body></body>");
  await page.addScriptTag({ url: `http://${host}:${port}/push-serve.js` });
  await page.evaluate((url) => {
    window.orders = []; window.joins = []; window.bids = []; window.nacks = []; window.pools = [];
    const push = new PushServe({ url, uid: "71", getAccessKey: () => window.backendJwt(), minDelay: 100, maxDelay: 500 });
    window.inboxed = [];
    push.on("order", (contents, frame) => {
      window.orders.push(contents);
      if (frame.inbox) window.inboxed.push(contents.n);
      if (contents.n === 1) throw new Error("a handler that throws still counts as handled");
    });
    push.on("_join", (room) => window.joins.push(room));
    push.on("auction:1", (contents) => window.bids.push(contents));
    push.on("_nack", (n) => window.nacks.push(n));
    for (const event of ["cart:71:snapshot", "cart:71:update", "lot:2:snapshot", "lot:2:append"]) {
      push.on(event, (doc, frame) => window.pools.push([event, doc, frame.number]));
    }
    push.start();
    window.push = push;
  }, `ws://${host}:${port}/ws`);
  await until("the page to connect with its JWT", async () => (await request("GET", "/online?uid=71")).json.number === 1);

  // Receipts: the inbox message, then two pushes; the page acks each once its handler returned.
  const ids = [boxed.json.contents.id];
  for (const n of [1, 2]) {
    const r = await request("POST", "/push?uid=71", { topic: "order", contents: { n }, receipt: true });
    if (r.status !== 200 || r.json.contents.expect_acks !== 1) throw new Error(`push with receipt: ${JSON.stringify(r)}`);
    ids.push(r.json.contents.id);
  }
  for (const id of ids) {
    const report = await until(`the ack of ${id}`, async () => {
      const r = await request("GET", `/report/push/${id}?uids=1`);
      return r.json.number === 1 && r.json.contents;
    });
    if (JSON.stringify(report.ack_uids) !== '["71"]') throw new Error(`report ${JSON.stringify(report)}`);
  }

  // A room: the backend moves the page in; it is told, then gets the room's messages.
  const moved = await request("POST", "/rooms?uid=71", { join: ["auction:1"] });
  if (moved.status !== 200) throw new Error(`rooms: ${JSON.stringify(moved)}`);
  await until("_join", () => page.evaluate(() => window.joins.length === 1));
  await request("POST", "/publish", { topic: "auction:1", contents: { bid: 1450000 } });
  await until("the room's message", () => page.evaluate(() => window.bids.length === 1));

  // Data pools: the granted one's snapshot came first; a change follows it; a pool the backend
  // moves the page into comes as its snapshot after the `_join`, then its changes.
  await request("PUT", "/pool/cart:71", { items: ["tea", "cake"] });
  await until("the cart's update", () => page.evaluate(() => window.pools.length === 2));
  await request("POST", "/rooms?uid=71", { join: ["lot:2"] });
  await until("the lot's snapshot", () => page.evaluate(() => window.pools.length === 3));
  await request("POST", "/pool/lot:2", 12);
  await until("the lot's append", () => page.evaluate(() => window.pools.length === 4));
  const pools = await page.evaluate(() => window.pools);
  const want = [["cart:71:snapshot", { items: ["tea"] }, 1], ["cart:71:update", { items: ["tea", "cake"] }, 2],
    ["lot:2:snapshot", [10], 1], ["lot:2:append", 12, 2]];
  if (JSON.stringify(pools) !== JSON.stringify(want)) throw new Error(`pools ${JSON.stringify(pools)}`);

  const seen = await page.evaluate(() => ({
    orders: window.orders, inboxed: window.inboxed, joins: window.joins, bids: window.bids, nacks: window.nacks,
    positions: window.push.positions,
  }));
  console.log(JSON.stringify({ minted, thrown, ...seen }));
  if (JSON.stringify(seen.orders) !== '[{"n":0},{"n":1},{"n":2}]') failure = `orders ${JSON.stringify(seen.orders)}`;
  else if (JSON.stringify(seen.inboxed) !== "[0]") failure = `inbox ${JSON.stringify(seen.inboxed)}`;
  else if (!thrown.some((t) => t.includes("still counts"))) failure = `the handler's error was not reported: ${JSON.stringify(thrown)}`;
  else if (seen.nacks.length) failure = `nacks ${JSON.stringify(seen.nacks)}`;
  else if (seen.joins[0].stream !== "topic:auction:1" || !seen.positions["topic:auction:1"]) failure = `room ${JSON.stringify(seen)}`;
  else if (seen.positions["topic:auction:1"].split(":")[1] !== "1") failure = `room position ${JSON.stringify(seen.positions)}`;
  else if (minted < 1) failure = "the JWT was never minted";
} catch (e) {
  failure = e.stack || String(e);
} finally {
  await browser.close();
  keepAlive.destroy();
}
if (failure) { console.error("FAILED:", failure); process.exit(1); }
console.log("seeds in the browser: ok");
