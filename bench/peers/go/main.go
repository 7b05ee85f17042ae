// Reference peer for the benchmark: push-serve's wire contract (docs/CONTRACT.md) on Go with
// gorilla/websocket — the original service's stack, written correctly: a locked map of uid to a
// set of connections, the key checked before the upgrade, one writer goroutine per connection
// with a bounded channel, heartbeat, one serialization per push shared by a uid's sockets.
// Usage: push-peer-go [conf.yaml]
package main

import (
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
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

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
	ws   *websocket.Conn
	send chan []byte
	once sync.Once
}

func (c *conn) close() { c.once.Do(func() { close(c.send) }) }

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
			go c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(4008, "send queue full"), time.Now().Add(time.Second))
			go c.ws.Close()
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

func reply(w http.ResponseWriter, status int, topic string, number int, contents interface{}) {
	body, _ := json.Marshal(map[string]interface{}{"topic": topic, "number": number, "contents": contents})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
}

func fail(w http.ResponseWriter, status int, reason string) { reply(w, status, "error", 0, reason) }

func (s *server) mac(uid string, expiry string) []byte {
	m := hmac.New(sha256.New, s.signingKey)
	io.WriteString(m, "v1\n"+uid+"\n"+expiry)
	return m.Sum(nil)[:16]
}

var keyRe = regexp.MustCompile(`^v1\.(\d{1,20})\.([0-9a-f]{32})$`)

func (s *server) verify(uid, key string) string {
	if key == "" {
		return "missing access_key"
	}
	m := keyRe.FindStringSubmatch(key)
	if m == nil {
		return "invalid access_key"
	}
	given, _ := hex.DecodeString(m[2])
	if !hmac.Equal(given, s.mac(uid, m[1])) {
		return "invalid access_key"
	}
	expiry, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil || expiry <= time.Now().Unix() {
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
	expiry := strconv.FormatInt(time.Now().Unix()+s.cfg.TTL, 10)
	reply(w, 200, "_access", 1, "v1."+expiry+"."+hex.EncodeToString(s.mac(uid, expiry)))
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
	var msg pushBody
	if err := json.Unmarshal(body, &msg); err != nil || msg.Topic == nil || msg.Contents == nil {
		fail(w, 400, `body must be JSON {"topic": string, "contents": any}`)
		return
	}
	topic, _ := json.Marshal(*msg.Topic)
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
		fail(w, 426, "this endpoint takes a WebSocket upgrade")
		return
	}
	ws, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	c := &conn{ws: ws, send: make(chan []byte, sendQueue)}
	s.hub.add(uid, c)
	go s.writer(c)
	s.reader(uid, c)
}

// reader discards client frames (answering pings) and ends the connection on error.
func (s *server) reader(uid string, c *conn) {
	defer func() {
		s.hub.remove(uid, c)
		c.close()
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

// writer is the only goroutine that writes data frames; it batches what is queued.
func (s *server) writer(c *conn) {
	ticker := time.NewTicker(pingInterval)
	defer func() {
		ticker.Stop()
		c.ws.Close()
	}()
	for {
		select {
		case frame, ok := <-c.send:
			c.ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if !ok {
				c.ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(1001, "server shutting down"))
				return
			}
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
