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
 * - tells the page through "_gap" when the server no longer has what was missed.
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
    this.handlers = {};
    this.positions = {};   // stream -> "generation:seq" of the last message seen
    this.ws = null;
    this.run = 0;          // bumped by start/stop: callbacks of an earlier run do nothing
    this.stopped = true;
    this.attempt = 0;
    this.failedOpens = 0;
    this.timer = null;
  }

  /** Calls fn(contents, frame) for each message whose topic is `topic` ("*": every message).
   *  Also "open", "close" (with the CloseEvent), "_gap" (with the gap's details). */
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
    var ws = this.ws;
    this.ws = null;               // its close event is now a stale socket's, and ignored
    if (ws) ws.close(1000);
    return this;
  };

  /** Unix seconds at which a push-serve key expires (v1.<expiry>.… or v2.<expiry>.…). */
  function keyExpiry(key) {
    var parts = String(key || "").split(".");
    var t = Number(parts[1]);
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

  PushServe.prototype.open = function () {
    var self = this;
    if (self.stopped) return;
    if (self.ws) { var old = self.ws; self.ws = null; old.close(1000); }
    var query = "uid=" + encodeURIComponent(self.uid) +
      "&access_key=" + encodeURIComponent(self.accessKey || "") + "&proto=2";
    if (Object.keys(self.positions).length) {
      query += "&since=" + encodeURIComponent(JSON.stringify(self.positions));
    }
    var ws = new self.WebSocket(self.url + (self.url.indexOf("?") < 0 ? "?" : "&") + query);
    var opened = false;
    self.ws = ws;
    // Every handler first checks that its socket is still the current one: a socket replaced
    // or closed by stop() may still fire events, and its close must not start a second socket.
    ws.onopen = function () {
      if (self.ws !== ws) return;
      opened = true;
      self.attempt = 0;
      self.failedOpens = 0;
      self.emit("open");
    };
    ws.onmessage = function (e) { if (self.ws === ws) self.receive(e.data); };
    ws.onclose = function (e) {
      if (self.ws !== ws) return;
      self.ws = null;
      if (!opened) self.failedOpens++;
      self.emit("close", e);
      self.retry();
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
    if (frame.topic === "_gap") {
      var gap = frame.contents || {};
      this.emit("_gap", gap, frame);
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
  };

  function generation(pos) { return String(pos || "").split(":")[0]; }

  PushServe.keyExpiry = keyExpiry;
  global.PushServe = PushServe;
  if (typeof module !== "undefined" && module.exports) module.exports = PushServe;
})(typeof window !== "undefined" ? window : globalThis);
