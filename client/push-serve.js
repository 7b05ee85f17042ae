/*! push-serve browser client. One <script>, no build step, no dependencies.
 *
 *   <script src="https://push.example.com/push-serve.js"></script>   (served by push-serve)
 *   <script>
 *     const push = new PushServe({
 *       url: "wss://push.example.com/ws",
 *       uid: "alice",
 *       accessKey: "v1.…",                        // optional first key, from your backend
 *       getAccessKey: async () => (await fetch("/api/push-key")).text(),  // a fresh key
 *     });
 *     push.on("order", (contents, frame) => console.log("order", contents));
 *     push.on("*", (contents, frame) => {});      // every message
 *     push.on("_gap", (info) => reloadState());   // missed messages are gone: refetch state
 *     push.start();
 *   </script>
 *
 * What it does for the page:
 * - connects with proto=2, so every message carries its stream and sequence number;
 * - reconnects after any close with jittered exponential backoff (0.5 s doubling to 30 s);
 * - resumes: sends the last position of every stream it follows, so the server replays what
 *   was missed, in order, exactly once; a message it has already seen is never delivered twice;
 * - fetches a fresh access key (getAccessKey) when the key it holds is near expiry or a
 *   connection attempt fails before opening (which is how a browser reports a refused key);
 * - tells the page through "_gap" when the server no longer has what was missed;
 * - falls back to the server's event stream (GET /sse, EventSource) when two WebSocket connects
 *   in a row fail before opening while plain HTTP reaches the server at that moment (a proxy
 *   that strips Upgrade), and goes back to WebSockets if the event stream fails twice in a row. The
 *   frames, resume and events are the same; `push.transport` says which is in use.
 */
(function (global) {
  "use strict";

  function PushServe(options) {
    if (!(this instanceof PushServe)) return new PushServe(options);
    if (!options || !options.url || !options.uid) throw new Error("PushServe needs url and uid");
    this.url = options.url;
    this.uid = String(options.uid);
    this.accessKey = options.accessKey || null;
    this.getAccessKey = options.getAccessKey || null;
    this.minDelay = options.minDelay || 500;
    this.maxDelay = options.maxDelay || 30000;
    this.WebSocket = options.WebSocket || global.WebSocket;
    this.EventSource = options.EventSource || global.EventSource;
    this.fetch = options.fetch || (global.fetch ? global.fetch.bind(global) : null);
    this.sseUrl = options.sseUrl || sseUrlOf(this.url);
    this.transport = "ws";  // "sse" once WebSockets proved blocked while plain HTTP works
    this.handlers = {};
    this.positions = {};   // stream -> "generation:seq" of the last message seen
    this.conn = null;      // the current WebSocket, or EventSource on the SSE fallback
    this.run = 0;          // bumped by start/stop: callbacks of an earlier run do nothing
    this.stopped = true;
    this.attempt = 0;
    this.failedOpens = 0;  // connects in a row that failed before opening (key refresh)
    this.wsBlocked = 0;    // WebSocket connects in a row that failed while plain HTTP worked
    this.sseFailures = 0;  // the same on the SSE fallback (back to WebSockets)
    this.timer = null;
  }

  /** ws://host/ws → http://host/sse (wss → https), the server's event stream. */
  function sseUrlOf(url) {
    return String(url).replace(/^ws(s?):/i, "http$1:").replace(/\/ws(\?|$)/, "/sse$1");
  }

  /** Calls fn(contents, frame) for each message whose topic is `topic` ("*": every message);
   *  a message sent with a receipt is acked once they have returned. A message kept in this
   *  uid's offline inbox comes first when the page opens, with frame.inbox true. A data pool
   *  the page follows comes first as "<pool>:snapshot" (its whole document), then its
   *  "<pool>:add", ":update", ":append" and ":delete" changes.
   *  Also "open", "close" (with the CloseEvent), "_gap" (with the gap's details), "_nack" (an
   *  ack the server refused: {id, reason}), "_join" and
   *  "_leave" ({stream, position}: the backend moved this socket into or out of a room), and
   *  "disconnected" (the backend closed this user's sockets with 4011: the client stops). */
  PushServe.prototype.on = function (topic, fn) {
    (this.handlers[topic] = this.handlers[topic] || []).push(fn);
    return this;
  };

  PushServe.prototype.off = function (topic, fn) {
    var list = this.handlers[topic] || [];
    this.handlers[topic] = list.filter(function (h) { return h !== fn; });
    return this;
  };

  PushServe.prototype.emit = function (topic, a, b) {
    var list = (this.handlers[topic] || []).slice();
    for (var i = 0; i < list.length; i++) {
      try { list[i](a, b); } catch (e) { setTimeout(function () { throw e; }); }
    }
  };

  PushServe.prototype.start = function () {
    if (!this.stopped) return this;
    this.stopped = false;
    this.run++;
    this.connect();
    return this;
  };

  PushServe.prototype.stop = function () {
    this.stopped = true;
    this.run++;
    clearTimeout(this.timer);
    var conn = this.conn;
    this.conn = null;             // its close event is now a stale socket's, and ignored
    if (conn) conn.close(1000);
    return this;
  };

  /** Unix seconds at which a key expires: push-serve's (v1.<expiry>.… or v2.<expiry>.…), or a
   *  JWT's `exp` claim (header.claims.signature, base64url). 0 if it cannot be read. */
  function keyExpiry(key) {
    var parts = String(key || "").split(".");
    var t = Number(parts[1]);
    if (parts.length === 3 && parts[0] !== "v1" && parts[0] !== "v2") {
      try {
        var b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
        t = Number(JSON.parse(atob(b64 + "===".slice((b64.length + 3) % 4))).exp);
      } catch (e) { t = 0; }
    }
    return isFinite(t) ? t : 0;
  }

  PushServe.prototype.freshKeyNeeded = function () {
    if (!this.accessKey) return true;
    if (this.failedOpens >= 2) return true;   // a refused key looks like any failed connect
    return keyExpiry(this.accessKey) - Date.now() / 1000 < 30;
  };

  PushServe.prototype.connect = function () {
    var self = this;
    var run = self.run;
    if (self.stopped) return;
    var ready = Promise.resolve();
    if (self.getAccessKey && self.freshKeyNeeded()) {
      ready = Promise.resolve()
        .then(function () { return self.getAccessKey(); })
        .then(function (key) { self.accessKey = String(key).trim(); self.failedOpens = 0; });
    }
    // A key that arrives after stop() (or after stop() and start()) opens nothing.
    ready.then(function () { if (run === self.run) self.open(); },
               function () { if (run === self.run) self.retry(); });
  };

  /** A WebSocket connect just failed before opening: asks the event stream, with the same key,
   *  whether plain HTTP gets through right now (HEAD /sse runs every check but opens nothing).
   *  200, twice in a row: WebSockets are what is blocked (a proxy that strips Upgrade), so the
   *  SSE fallback takes over. Another status (401: the key, refreshed before the next connect;
   *  429, 503: limits) or no answer (the network or server is down) is not a blocked upgrade. */
  PushServe.prototype.probe = function () {
    var self = this;
    return self.fetch(self.sseUrl + (self.sseUrl.indexOf("?") < 0 ? "?" : "&") + self.query(),
      { method: "HEAD", cache: "no-store" })
      .then(function (reply) { return reply.ok; }, function () { return false; })
      .then(function (httpWorks) {
        self.wsBlocked = httpWorks ? self.wsBlocked + 1 : 0;
        if (self.wsBlocked >= 2) {
          self.transport = "sse";
          self.wsBlocked = 0;
        }
      });
  };

  PushServe.prototype.query = function () {
    var query = "uid=" + encodeURIComponent(this.uid) +
      "&access_key=" + encodeURIComponent(this.accessKey || "") + "&proto=2";
    if (Object.keys(this.positions).length) {
      query += "&since=" + encodeURIComponent(JSON.stringify(this.positions));
    }
    return query;
  };

  PushServe.prototype.open = function () {
    var self = this;
    if (self.stopped) return;
    if (self.conn) { var old = self.conn; self.conn = null; old.close(1000); }
    var sse = self.transport === "sse";
    var base = sse ? self.sseUrl : self.url;
    var url = base + (base.indexOf("?") < 0 ? "?" : "&") + self.query();
    var conn = sse ? new self.EventSource(url) : new self.WebSocket(url);
    var opened = false;
    var said = null;
    self.conn = conn;
    // Every handler first checks that its connection is still the current one: one replaced or
    // closed by stop() may still fire events, and its close must not start a second one.
    conn.onopen = function () {
      if (self.conn !== conn) return;
      opened = true;
      self.attempt = 0;
      self.failedOpens = 0;
      if (sse) self.sseFailures = 0; else self.wsBlocked = 0;
      self.emit("open");
    };
    conn.onmessage = function (e) { if (self.conn === conn) self.receive(e.data); };
    function closed(e) {
      if (self.conn !== conn) return;
      self.conn = null;
      self.emit("close", e);
      if (e.code === 4011) {
        // The backend disconnected this user (a logout, a ban): stay disconnected.
        self.stopped = true;
        self.emit("disconnected", e);
        return;
      }
      if (opened) return self.retry();
      self.failedOpens++;
      if (sse) {
        if (++self.sseFailures >= 2) {
          // The event stream fails too: whatever blocked WebSockets is gone, or never was.
          self.transport = "ws";
          self.sseFailures = 0;
        }
        return self.retry();
      }
      if (!self.EventSource || !self.fetch) return self.retry();
      var run = self.run;
      self.probe().then(function () { if (run === self.run) self.retry(); });
    }
    if (!sse) {
      conn.onclose = closed;
      return;
    }
    // The server's last event says why it ends the stream, with the WebSocket close codes.
    conn.addEventListener("close", function (e) {
      try { said = JSON.parse(e.data); } catch (x) { said = null; }
    });
    // EventSource would reconnect by itself, but with the key and positions it started with;
    // this client reconnects as after any close instead.
    conn.onerror = function () {
      conn.close();
      closed({ code: said ? said.code : 1006, reason: said ? said.reason : "", transport: "sse" });
    };
  };

  PushServe.prototype.retry = function () {
    var self = this;
    if (self.stopped) return;
    var base = Math.min(self.maxDelay, self.minDelay * Math.pow(2, self.attempt));
    self.attempt++;
    var delay = base / 2 + Math.random() * base / 2;   // jitter: reconnect storms spread out
    clearTimeout(self.timer);
    self.timer = setTimeout(function () { self.connect(); }, delay);
  };

  PushServe.prototype.receive = function (data) {
    var frame;
    try { frame = JSON.parse(data); } catch (e) { return; }
    if (frame.topic === "_welcome") {
      var streams = (frame.contents && frame.contents.streams) || {};
      for (var name in streams) {
        // A stream seen for the first time starts at its current position; for a known one
        // the server has already compared generations and will send what was missed.
        if (!(name in this.positions)) this.positions[name] = streams[name];
        else if (generation(this.positions[name]) !== generation(streams[name])) {
          this.positions[name] = streams[name].split(":")[0] + ":0";
        }
      }
      return;
    }
    if (frame.topic === "_join" || frame.topic === "_leave") {
      // The backend moved this socket into a room (from `position` on) or out of one.
      var room = frame.contents || {};
      if (frame.topic === "_join" && room.stream && room.position) {
        this.positions[room.stream] = room.position;
      } else if (room.stream) {
        delete this.positions[room.stream];
      }
      this.emit(frame.topic, room, frame);
      return;
    }
    if (frame.topic === "_nack") {
      // The server refused an ack of ours (an expired id): nothing to do but tell the page.
      this.emit("_nack", frame.contents || {}, frame);
      return;
    }
    if (frame.topic === "_gap") {
      var gap = frame.contents || {};
      this.emit("_gap", gap, frame);
      return;
    }
    if (frame.stream && /:snapshot$/.test(frame.topic) &&
        frame.stream === "topic:" + frame.topic.slice(0, -":snapshot".length)) {
      // A data pool's document, exact at this position: only later changes follow, so it is
      // always handled (even at the position the welcome gave, and again after a reconnect)
      // and moves the position there. (A message published as "x:snapshot" has stream
      // "topic:x:snapshot", so it never takes this path.)
      var at = this.positions[frame.stream];
      this.positions[frame.stream] = generation(at) + ":" + Math.max(frame.number, at ? Number(at.split(":")[1]) : 0);
      this.emit(frame.topic, frame.contents, frame);
      this.emit("*", frame.contents, frame);
      return;
    }
    var stream = frame.stream;
    if (stream) {
      var pos = this.positions[stream];
      var seen = pos ? Number(pos.split(":")[1]) : 0;
      if (frame.number <= seen) return;              // already delivered: exactly once
      this.positions[stream] = generation(pos) + ":" + frame.number;
    }
    this.emit(frame.topic, frame.contents, frame);
    this.emit("*", frame.contents, frame);
    // The backend asked for a receipt: ack once the handlers have returned (a handler that
    // throws is reported by emit and still counts as handled).
    if (frame.id) this.ack(frame.id);
  };

  /** Tells the server this page handled message `id` (on a WebSocket; an event stream cannot
   *  send, so its messages are not acked). */
  PushServe.prototype.ack = function (id) {
    var conn = this.conn;
    if (conn && this.transport === "ws" && conn.readyState === 1) {
      conn.send(JSON.stringify({ ack: id }));
    }
  };

  function generation(pos) { return String(pos || "").split(":")[0]; }

  PushServe.keyExpiry = keyExpiry;
  global.PushServe = PushServe;
  if (typeof module !== "undefined" && module.exports) module.exports = PushServe;
})(typeof window !== "undefined" ? window : globalThis);
