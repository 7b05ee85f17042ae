// Reference peer for the benchmark: push-serve's wire contract (docs/CONTRACT.md) on Go with
// gorilla/websocket — the original service's stack, written correctly: a locked map of uid to a
// set of connections, the key checked before the upgrade, one writer goroutine per connection
// with a bounded channel, heartbeat, one serialization per push shared by a uid's sockets.
// Usage: push-peer-go [conf.yaml]
package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
	"gopkg.in/yaml.v2"
)

const (
	maxBody      = 1 << 20
	sendQueue    = 256
	pingInterval = 25 * time.Second
	pushOK       = "推送成功"
	offline      = "此用户不在线"
)

type config struct {
	Addr     string `yaml:"addr"`
	Password string `yaml:"password"`
	Secret   string `yaml:"secret"`
	TTL      int64  `yaml:"access_key_ttl_secs"`
}

type conn struct {
	mu     sync.Mutex
	ws     *websocket.Conn // nil until the upgrade completes
	kicked bool            // cut off as a slow reader (possibly before ws was set)
	send   chan []byte     // frames for the writer goroutine; closed once the conn leaves the hub
	kick   sync.Once
}

// cutOff closes a slow reader with 4008, once, without blocking the pusher. If the upgrade has
// not completed yet, attach does it.
func (c *conn) cutOff() {
	c.kick.Do(func() {
		c.mu.Lock()
		c.kicked = true
		ws := c.ws
		c.mu.Unlock()
		if ws != nil {
			go closeSlow(ws)
		}
	})
}

// attach records the upgraded socket; if the conn was cut off meanwhile, closes it.
func (c *conn) attach(ws *websocket.Conn) {
	c.mu.Lock()
	c.ws = ws
	kicked := c.kicked
	c.mu.Unlock()
	if kicked {
		go closeSlow(ws)
	}
}

// closeSlow sends 4008 (waiting at most 1 s behind a write in progress), then closes the TCP
// connection, which ends both the reader and the writer goroutine.
func closeSlow(ws *websocket.Conn) {
	ws.WriteControl(websocket.CloseMessage,
		websocket.FormatCloseMessage(4008, "send queue full"), time.Now().Add(time.Second))
	ws.Close()
}

type hub struct {
	mu    sync.RWMutex
	users map[string]map[*conn]struct{}
}

func (h *hub) add(uid string, c *conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	set := h.users[uid]
	if set == nil {
		set = make(map[*conn]struct{})
		h.users[uid] = set
	}
	set[c] = struct{}{}
}

func (h *hub) remove(uid string, c *conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if set := h.users[uid]; set != nil {
		delete(set, c)
		if len(set) == 0 {
			delete(h.users, uid)
		}
	}
}

// deliver queues frame on every socket of uid without blocking; a full queue marks a slow reader.
func (h *hub) deliver(uid string, frame []byte) int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	n := 0
	for c := range h.users[uid] {
		select {
		case c.send <- frame:
			n++
		default:
			c.cutOff()
		}
	}
	return n
}

type server struct {
	cfg            config
	signingKey     []byte
	passwordDigest [32]byte
	hub            *hub
	upgrader       websocket.Upgrader
}

// envelope is every reply's body; a struct keeps the contract's field order.
type envelope struct {
	Topic    string      `json:"topic"`
	Number   int         `json:"number"`
	Contents interface{} `json:"contents"`
}

func reply(w http.ResponseWriter, status int, topic string, number int, contents interface{}) {
	body, _ := json.Marshal(envelope{topic, number, contents})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
}

func fail(w http.ResponseWriter, status int, reason string) { reply(w, status, "error", 0, reason) }

func (s *server) mac(uid string, expiry uint64) []byte {
	m := hmac.New(sha256.New, s.signingKey)
	io.WriteString(m, "v1\n"+uid+"\n"+strconv.FormatUint(expiry, 10))
	return m.Sum(nil)[:16]
}

func (s *server) issue(uid string) string {
	expiry := uint64(time.Now().Unix() + s.cfg.TTL)
	return "v1." + strconv.FormatUint(expiry, 10) + "." + hex.EncodeToString(s.mac(uid, expiry))
}

func digitsOnly(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if !(s[i] >= '0' && s[i] <= '9' || s[i] >= 'a' && s[i] <= 'f') {
			return false
		}
	}
	return true
}

// verify checks a "v1.<expiry>.<32 lowercase hex>" key; "" when it is valid, else the reason.
func (s *server) verify(uid, key string) string {
	if key == "" {
		return "missing access_key"
	}
	parts := strings.Split(key, ".")
	if len(parts) != 3 || parts[0] != "v1" || len(parts[1]) == 0 || len(parts[1]) > 20 ||
		!digitsOnly(parts[1]) || len(parts[2]) != 32 || !lowerHex(parts[2]) {
		return "invalid access_key"
	}
	expiry, err := strconv.ParseUint(parts[1], 10, 64)
	if err != nil {
		return "invalid access_key"
	}
	given, _ := hex.DecodeString(parts[2])
	if !hmac.Equal(given, s.mac(uid, expiry)) {
		return "invalid access_key"
	}
	if expiry <= uint64(time.Now().Unix()) {
		return "access_key expired"
	}
	return ""
}

func (s *server) passwordOK(r *http.Request) bool {
	q := r.URL.Query()
	given, ok := q.Get("password"), q.Has("password")
	if !ok {
		auth := r.Header.Get("Authorization")
		if !strings.HasPrefix(auth, "Bearer ") {
			return false
		}
		given = auth[7:]
	}
	d := sha256.Sum256([]byte(given))
	return subtle.ConstantTimeCompare(d[:], s.passwordDigest[:]) == 1
}

func uidOf(w http.ResponseWriter, r *http.Request) (string, bool) {
	uid := r.URL.Query().Get("uid")
	if uid == "" {
		fail(w, 400, "missing uid")
		return "", false
	}
	if len(uid) > 256 {
		fail(w, 400, "uid longer than 256 bytes")
		return "", false
	}
	return uid, true
}

func (s *server) access(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		fail(w, 405, "method not allowed, use GET, POST")
		return
	}
	if !s.passwordOK(r) {
		fail(w, 401, "wrong or missing password")
		return
	}
	uid, ok := uidOf(w, r)
	if !ok {
		return
	}
	reply(w, 200, "_access", 1, s.issue(uid))
}

// jsonString encodes s as a JSON string without json.Marshal's HTML escaping of <, >, &, so
// the topic reaches the page as the other servers send it.
func jsonString(s string) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.Encode(s)
	return bytes.TrimSuffix(b.Bytes(), []byte{'\n'})
}

type pushBody struct {
	Topic    *string         `json:"topic"`
	Contents json.RawMessage `json:"contents"`
}

func (s *server) push(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		fail(w, 405, "method not allowed, use POST")
		return
	}
	if !s.passwordOK(r) {
		fail(w, 401, "wrong or missing password")
		return
	}
	uid, ok := uidOf(w, r)
	if !ok {
		return
	}
	if r.ContentLength > maxBody {
		fail(w, 413, fmt.Sprintf("request body larger than %d bytes", maxBody))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		if _, tooBig := err.(*http.MaxBytesError); tooBig {
			fail(w, 413, fmt.Sprintf("request body larger than %d bytes", maxBody))
		} else {
			fail(w, 400, "could not read request body")
		}
		return
	}
	// encoding/json would accept invalid UTF-8 inside strings, and RawMessage would forward it
	// into a text frame.
	var msg pushBody
	if !utf8.Valid(body) || json.Unmarshal(body, &msg) != nil || msg.Topic == nil || msg.Contents == nil {
		fail(w, 400, `body must be JSON {"topic": string, "contents": any}`)
		return
	}
	topic := jsonString(*msg.Topic)
	frame := make([]byte, 0, len(msg.Contents)+len(topic)+40)
	frame = append(frame, `{"topic":`...)
	frame = append(frame, topic...)
	frame = append(frame, `,"number":1,"contents":`...)
	frame = append(frame, msg.Contents...)
	frame = append(frame, '}')
	if n := s.hub.deliver(uid, frame); n > 0 {
		reply(w, 200, "success", n, pushOK)
	} else {
		fail(w, 404, offline)
	}
}

func (s *server) ws(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		fail(w, 405, "method not allowed, use GET")
		return
	}
	uid, ok := uidOf(w, r)
	if !ok {
		return
	}
	if problem := s.verify(uid, r.URL.Query().Get("access_key")); problem != "" {
		fail(w, 401, problem)
		return
	}
	if !websocket.IsWebSocketUpgrade(r) {
		w.Header().Set("Upgrade", "websocket")
		fail(w, 426, "this endpoint takes a WebSocket upgrade")
		return
	}
	// Registered before the 101 is written: a push made the moment the page sees its socket
	// open must find it. Frames queued meanwhile wait in c.send.
	c := &conn{send: make(chan []byte, sendQueue)}
	s.hub.add(uid, c)
	ws, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		s.hub.remove(uid, c)
		return
	}
	c.attach(ws)
	go s.writer(c)
	s.reader(uid, c)
}

// reader discards client frames (answering pings) and ends the connection on error.
func (s *server) reader(uid string, c *conn) {
	defer func() {
		s.hub.remove(uid, c) // after this no pusher can reach c.send, so closing it is safe
		close(c.send)
		c.ws.Close()
	}()
	c.ws.SetReadLimit(64 << 10)
	c.ws.SetReadDeadline(time.Now().Add(2 * pingInterval))
	c.ws.SetPongHandler(func(string) error {
		return c.ws.SetReadDeadline(time.Now().Add(2 * pingInterval))
	})
	for {
		if _, _, err := c.ws.NextReader(); err != nil {
			return
		}
		c.ws.SetReadDeadline(time.Now().Add(2 * pingInterval))
	}
}

// writer is the only goroutine that writes data frames and pings (gorilla allows one writer).
func (s *server) writer(c *conn) {
	ticker := time.NewTicker(pingInterval)
	defer func() {
		ticker.Stop()
		c.ws.Close()
	}()
	for {
		select {
		case frame, ok := <-c.send:
			if !ok { // the reader ended: the connection is closed or failing
				return
			}
			c.ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if err := c.ws.WriteMessage(websocket.TextMessage, frame); err != nil {
				return
			}
		case <-ticker.C:
			c.ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if err := c.ws.WriteMessage(websocket.PingMessage, nil); err != nil {
				return
			}
		}
	}
}

func main() {
	path := "conf.yaml"
	if len(os.Args) > 1 {
		path = os.Args[1]
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		log.Fatal(err)
	}
	var cfg config
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		log.Fatal(err)
	}
	if cfg.Password == "" {
		log.Fatal("conf: password must not be empty")
	}
	if cfg.Addr == "" {
		log.Fatal("conf: addr (host:port) is required")
	}
	if cfg.TTL == 0 {
		cfg.TTL = 3600
	}
	material := cfg.Secret
	if material == "" {
		material = cfg.Password
	}
	sk := sha256.Sum256([]byte("push-serve access-key v1\x00" + material))
	s := &server{
		cfg:            cfg,
		signingKey:     sk[:],
		passwordDigest: sha256.Sum256([]byte(cfg.Password)),
		hub:            &hub{users: make(map[string]map[*conn]struct{})},
		upgrader: websocket.Upgrader{
			ReadBufferSize:  1024,
			WriteBufferSize: 4096,
			// Write buffers only while a frame is being written: idle sockets hold none.
			WriteBufferPool: &sync.Pool{},
			CheckOrigin:     func(*http.Request) bool { return true },
		},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/access", s.access)
	mux.HandleFunc("/push", s.push)
	mux.HandleFunc("/ws", s.ws)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fail(w, 404, "not found") })
	srv := &http.Server{Addr: cfg.Addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
		<-stop
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		os.Exit(0)
	}()
	log.Printf("push-peer-go listening on %s", cfg.Addr)
	if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
		log.Fatal(err)
	}
}
