package notifier_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// receiver is the webhook's other end: it answers 503 to the first failFirst[uid] requests
// for a notification and 200 to every later one, and counts both.
type receiver struct {
	failFirst map[string]int

	mu        sync.Mutex
	requests  map[string]int
	successes map[string]int
}

func newReceiver(failFirst map[string]int) *receiver {
	return &receiver{failFirst: failFirst, requests: map[string]int{}, successes: map[string]int{}}
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var document struct {
		UID string `json:"uid"`
	}
	if err := json.NewDecoder(r.Body).Decode(&document); err != nil || document.UID == "" {
		http.Error(w, "no uid", http.StatusBadRequest)
		return
	}
	rc.mu.Lock()
	rc.requests[document.UID]++
	succeeds := rc.requests[document.UID] > rc.failFirst[document.UID]
	if succeeds {
		rc.successes[document.UID]++
	}
	rc.mu.Unlock()
	if !succeeds {
		http.Error(w, "try again later", http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (rc *receiver) counts(uid string) (requests, successes int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.requests[uid], rc.successes[uid]
}

// serverCommand is $SENDONCE_SERVER, else the repository's .venv/bin/sendonce-server.
func serverCommand(t *testing.T) string {
	t.Helper()
	if command := os.Getenv("SENDONCE_SERVER"); command != "" {
		return command
	}
	command, err := filepath.Abs("../../.venv/bin/sendonce-server")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(command); err != nil {
		t.Fatalf("no sendonce-server at %s (run `make setup`, or set SENDONCE_SERVER)", command)
	}
	return command
}

func freePort(t *testing.T) string {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close()
	return listener.Addr().String()
}

// stopOnCleanup sends SIGTERM to the process when the test ends, and kills it after 20 s.
func stopOnCleanup(t *testing.T, cmd *exec.Cmd) {
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
}

// startSidecar runs sendonce-server on a free port until the test ends, and returns its
// address once its health service answers SERVING.
func startSidecar(t *testing.T, args ...string) string {
	t.Helper()
	address := freePort(t)
	cmd := exec.Command(serverCommand(t), append([]string{"--listen", address}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopOnCleanup(t, cmd)
	conn, err := grpc.NewClient(address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	answer, err := healthpb.NewHealthClient(conn).Check(
		ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
	if err != nil || answer.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("sidecar not serving (%v): %s", err, stderr.String())
	}
	return address
}

// startRedis runs a redis-server on a free port until the test ends and returns its URL, or
// "" when there is no redis-server (a failure under CI=true, where .ci/run installs one).
func startRedis(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("redis-server is required under CI=true")
		}
		return ""
	}
	address := freePort(t)
	_, port, _ := net.SplitHostPort(address)
	cmd := exec.Command("redis-server", "--bind", "127.0.0.1", "--port", port,
		"--save", "", "--appendonly", "no", "--dir", t.TempDir())
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopOnCleanup(t, cmd)
	ready := make(chan bool, 1)
	go func() {
		lines := bufio.NewScanner(stdout)
		for lines.Scan() {
			if strings.Contains(lines.Text(), "Ready to accept connections") {
				ready <- true
				break
			}
		}
		for lines.Scan() { // keep the pipe drained
		}
		ready <- false
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatal("redis-server exited before it was ready")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("redis-server not ready after 30 s")
	}
	return "redis://" + address + "/0"
}
