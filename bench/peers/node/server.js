// Reference peer for the benchmark: push-serve's wire contract (docs/CONTRACT.md) on Node.js
// with the `ws` package, written the way a careful team would (the approach of seed 002):
// node:http for /access and /push, ws in noServer mode with the key checked before the
// upgrade, uid -> Set of sockets, one serialization per push shared by all of a uid's sockets,
// heartbeat, slow-consumer cut-off, body limit. Usage: node server.js [conf.yaml]
"use strict";
const http = require("node:http");
const crypto = require("node:crypto");
const fs = require("node:fs");
const { WebSocket, WebSocketServer } = require("ws");

// conf.yaml: only flat `key: value` lines are needed (addr, password, secret, access_key_ttl_secs).
const conf = {};
for (const line of fs.readFileSync(process.argv[2] || "conf.yaml", "utf8").split("\n")) {
  const m = line.replace(/\s+#.*$/, "").match(/^([A-Za-z_]+)\s*:\s*(.*?)\s*$/);
  if (m) conf[m[1]] = m[2].replace(/^(['"])(.*)\1$/, "$2");
}
const password = String(conf.password || "");
if (!password) throw new Error("conf: password must not be empty");
if (!conf.addr) throw new Error("conf: addr (host:port) is required");
const ttl = Number(conf.access_key_ttl_secs || 3600);
const [host, port] = (() => {
  const i = conf.addr.lastIndexOf(":");
  return [conf.addr.slice(0, i).replace(/^\[|\]$/g, ""), Number(conf.addr.slice(i + 1))];
})();
const signingKey = crypto.createHash("sha256").update("push-serve access-key v1\0").update(conf.secret || password).digest();
const passwordDigest = crypto.createHash("sha256").update(password).digest();
const MAX_BODY = 1 << 20;
const MAX_BUFFERED = 4 << 20; // bytes queued on a socket before it is cut off as a slow reader (4008)
const MAX_UID = 256;
const U64_MAX = (1n << 64n) - 1n;
const SEND_TEXT = { binary: false };
const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const PUSH_OK = "推送成功";
const OFFLINE = "此用户不在线";

function mac(uid, expiry) {
  return crypto.createHmac("sha256", signingKey).update(`v1\n${uid}\n${expiry}`).digest().subarray(0, 16);
}
function issue(uid) {
  const expiry = Math.floor(Date.now() / 1000) + ttl;
  return `v1.${expiry}.${mac(uid, expiry).toString("hex")}`;
}
function verify(uid, key) {
  if (!key) return "missing access_key";
  const m = /^v1\.(\d{1,20})\.([0-9a-f]{32})$/.exec(key);
  if (!m) return "invalid access_key";
  const expiry = BigInt(m[1]); // the MAC covers the canonical decimal, as when it was issued
  if (expiry > U64_MAX) return "invalid access_key";
  if (!crypto.timingSafeEqual(Buffer.from(m[2], "hex"), mac(uid, expiry))) return "invalid access_key";
  if (expiry <= BigInt(Math.floor(Date.now() / 1000))) return "access_key expired";
  return null;
}
function passwordOk(query, headers) {
  const auth = headers.authorization || "";
  const given = query.get("password") ?? (auth.startsWith("Bearer ") ? auth.slice(7) : null);
  if (given === null) return false;
  return crypto.timingSafeEqual(crypto.createHash("sha256").update(given).digest(), passwordDigest);
}

// "" when the uid is fine, else the reason for a 400.
function uidProblem(uid) {
  if (!uid) return "missing uid";
  if (Buffer.byteLength(uid) > MAX_UID) return `uid longer than ${MAX_UID} bytes`;
  return "";
}

function reply(res, status, topic, number, contents) {
  const body = JSON.stringify({ topic, number, contents });
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body) });
  res.end(body);
}
const fail = (res, status, reason) => reply(res, status, "error", 0, reason);

// uid -> Set<WebSocket>
const sockets = new Map();

// Finds the raw text of the top-level "contents" value, so it is forwarded byte for byte
// (JSON.parse would turn 18446744073709551615 into a double). `body` was already validated.
function rawContents(body) {
  let i = 0;
  const n = body.length;
  const ws = () => { while (i < n && " \t\r\n".includes(body[i])) i++; };
  const skipString = () => { i++; while (i < n && body[i] !== '"') i += body[i] === "\\" ? 2 : 1; i++; };
  const skipValue = () => {
    ws();
    const start = i;
    if (body[i] === '"') skipString();
    else if (body[i] === "{" || body[i] === "[") {
      let depth = 0;
      do {
        if (body[i] === '"') { skipString(); continue; }
        if (body[i] === "{" || body[i] === "[") depth++;
        else if (body[i] === "}" || body[i] === "]") depth--;
        i++;
      } while (depth > 0 && i < n);
    } else while (i < n && !",}] \t\r\n".includes(body[i])) i++;
    return body.slice(start, i);
  };
  ws(); i++; // {
  let found = null;
  for (;;) {
    ws();
    if (body[i] === "}") break;
    const keyStart = i; skipString();
    const key = JSON.parse(body.slice(keyStart, i));
    ws(); i++; // :
    const value = skipValue();
    if (key === "contents") found = value; // last one wins, as in JSON.parse
    ws();
    if (body[i] === ",") i++;
  }
  return found;
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://x");
  const query = url.searchParams;
  if (url.pathname === "/access") {
    if (req.method !== "GET" && req.method !== "POST") return fail(res, 405, "method not allowed, use GET, POST");
    if (!passwordOk(query, req.headers)) return fail(res, 401, "wrong or missing password");
    const uid = query.get("uid") || "";
    const bad = uidProblem(uid);
    if (bad) return fail(res, 400, bad);
    return reply(res, 200, "_access", 1, issue(uid));
  }
  if (url.pathname === "/push") {
    if (req.method !== "POST") return fail(res, 405, "method not allowed, use POST");
    if (!passwordOk(query, req.headers)) return fail(res, 401, "wrong or missing password");
    const uid = query.get("uid") || "";
    const bad = uidProblem(uid);
    if (bad) return fail(res, 400, bad);
    // Too large: answer 413, then drop the connection once the reply is out (not before, or the
    // client may get a reset instead of the reply).
    const tooLarge = () => {
      res.setHeader("Connection", "close");
      res.on("finish", () => req.destroy());
      fail(res, 413, `request body larger than ${MAX_BODY} bytes`);
    };
    if (Number(req.headers["content-length"] || 0) > MAX_BODY) return tooLarge();
    const chunks = [];
    let size = 0;
    let refused = false;
    req.on("data", (c) => {
      if (refused) return;
      size += c.length;
      if (size > MAX_BODY) { refused = true; chunks.length = 0; tooLarge(); }
      else chunks.push(c);
    });
    req.on("end", () => {
      if (refused) return;
      let text, msg;
      try { text = utf8.decode(Buffer.concat(chunks, size)); } catch { return fail(res, 400, "body must be UTF-8 JSON"); }
      try { msg = JSON.parse(text); } catch (e) { return fail(res, 400, `body must be JSON: ${e.message}`); }
      if (!msg || typeof msg !== "object" || Array.isArray(msg) || typeof msg.topic !== "string" || !("contents" in msg)) {
        return fail(res, 400, 'body must be JSON {"topic": string, "contents": any}');
      }
      const set = sockets.get(uid);
      if (!set || set.size === 0) return fail(res, 404, OFFLINE);
      // Encoded once; every socket writes the same Buffer (a string would be re-encoded per socket).
      const frame = Buffer.from(`{"topic":${JSON.stringify(msg.topic)},"number":1,"contents":${rawContents(text)}}`);
      let n = 0;
      for (const ws of set) {
        if (ws.readyState !== WebSocket.OPEN) continue;
        if (ws.bufferedAmount > MAX_BUFFERED) { ws.close(4008, "send queue full"); continue; }
        ws.send(frame, SEND_TEXT);
        n++;
      }
      if (n === 0) return fail(res, 404, OFFLINE);
      reply(res, 200, "success", n, PUSH_OK);
    });
    return;
  }
  if (url.pathname === "/ws") {
    if (req.method !== "GET") return fail(res, 405, "method not allowed, use GET");
    const [status, reason] = wsProblem(query) || [426, "this endpoint takes a WebSocket upgrade"];
    if (status === 426) res.setHeader("Upgrade", "websocket");
    return fail(res, status, reason);
  }
  fail(res, 404, "not found");
});
server.keepAliveTimeout = 65000;

// Checked before any upgrade: [status, reason] or null.
function wsProblem(query) {
  const uid = query.get("uid") || "";
  const bad = uidProblem(uid);
  if (bad) return [400, bad];
  const problem = verify(uid, query.get("access_key"));
  return problem ? [401, problem] : null;
}

const wss = new WebSocketServer({ noServer: true, maxPayload: 64 << 10, perMessageDeflate: false });
server.on("upgrade", (req, socket, head) => {
  // Until ws takes the socket over, a reset from the client must not crash the process.
  const onSocketError = () => socket.destroy();
  socket.on("error", onSocketError);
  const url = new URL(req.url, "http://x");
  const refuse = (status, reason) => {
    const body = JSON.stringify({ topic: "error", number: 0, contents: reason });
    socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
  };
  if (url.pathname !== "/ws") return refuse(404, "not found");
  if (req.method !== "GET") return refuse(405, "method not allowed, use GET");
  const problem = wsProblem(url.searchParams);
  if (problem) return refuse(...problem);
  const uid = url.searchParams.get("uid");
  socket.removeListener("error", onSocketError);
  wss.handleUpgrade(req, socket, head, (ws) => {
    let set = sockets.get(uid);
    if (!set) sockets.set(uid, (set = new Set()));
    set.add(ws);
    ws.isAlive = true;
    ws.on("pong", () => { ws.isAlive = true; });
    ws.on("message", () => { ws.isAlive = true; });
    ws.on("error", () => {});
    ws.on("close", () => {
      set.delete(ws);
      if (set.size === 0 && sockets.get(uid) === set) sockets.delete(uid);
    });
  });
});

// Heartbeat: ping every 25 s; a socket that did not answer the previous ping is terminated.
setInterval(() => {
  for (const ws of wss.clients) {
    if (!ws.isAlive) { ws.terminate(); continue; }
    ws.isAlive = false;
    ws.ping();
  }
}, 25000).unref();

const shutdown = () => {
  for (const ws of wss.clients) ws.close(1001, "server shutting down");
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);
server.listen({ host, port, backlog: 4096 }, () => console.error(`push-peer-node listening on ${conf.addr}`));
