package sendonce_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/sendonce/sendonce/client/go/sendonce"
	sendoncev1 "github.com/sendonce/sendonce/client/go/sendoncev1"
)

// sidecar is a real sendonce-server process, started for the test.
type sidecar struct {
	address string
	socket  string
	// stdout is what the process printed: the console receiver's JSON lines.
	stdout *lockedBuffer
}

// lockedBuffer collects a process's output while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// consoleLine waits for the console receiver's line of uid and decodes it.
func (s sidecar) consoleLine(t *testing.T, uid string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, line := range strings.Split(s.stdout.String(), "\n") {
			var document map[string]any
			if json.Unmarshal([]byte(line), &document) == nil && document["uid"] == uid {
				return document
			}
		}
		time.Sleep(10 * time.Millisecond) // the process's output arrives through a pipe
	}
	t.Fatalf("no console line for %s in %q", uid, s.stdout.String())
	return nil
}

// serverCommand is $SENDONCE_SERVER, else the repository's .venv/bin/sendonce-server.
func serverCommand(t *testing.T) string {
	t.Helper()
	if command := os.Getenv("SENDONCE_SERVER"); command != "" {
		return command
	}
	command, err := filepath.Abs("../../../.venv/bin/sendonce-server")
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

// startSidecar runs sendonce-server on a free port and a unix socket until the test ends, and
// returns once its health service answers SERVING.
func startSidecar(t *testing.T, args ...string) sidecar {
	t.Helper()
	s := sidecar{
		address: freePort(t),
		socket:  filepath.Join(t.TempDir(), "sendonce.sock"),
		stdout:  &lockedBuffer{},
	}
	args = append([]string{"--listen", s.address, "--unix-socket", s.socket}, args...)
	cmd := exec.Command(serverCommand(t), args...)
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	cmd.Stdout = s.stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
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
	conn, err := grpc.NewClient(s.address, grpc.WithTransportCredentials(insecure.NewCredentials()))
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
	return s
}

func dial(t *testing.T, options sendonce.Options) *sendonce.Client {
	t.Helper()
	client, err := sendonce.Dial(options)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

func uid(t *testing.T) string {
	return fmt.Sprintf("%s-%d", t.Name(), time.Now().UnixNano())
}

var note = &sendoncev1.Notification{Subject: "Backup of db-0 failed", Body: "exit status 3"}

func TestDeliverOnceThenAlreadyDelivered(t *testing.T) {
	s := startSidecar(t)
	client := dial(t, sendonce.Options{Address: s.address})
	ctx := context.Background()
	key := uid(t)

	first, err := client.Deliver(ctx, key, "console", note)
	if err != nil {
		t.Fatal(err)
	}
	second, err := client.Deliver(ctx, key, "console", note)
	if err != nil {
		t.Fatal(err)
	}
	if first.Outcome != sendoncev1.Outcome_OUTCOME_DELIVERED || first.Attempt != 1 || !first.Final {
		t.Errorf("first: %+v", first)
	}
	if second.Outcome != sendoncev1.Outcome_OUTCOME_ALREADY_DELIVERED || !second.Delivered() {
		t.Errorf("second: %+v", second)
	}
	if first.GaveUp() || first.RequeueAfter(time.Second) != 0 || first.Receipt.GetReference() != "stdout" {
		t.Errorf("helpers on a delivered result: %+v", first)
	}

	state, err := client.AttemptCount(ctx, key, "console", 0)
	if err != nil {
		t.Fatal(err)
	}
	if !state.GetSucceeded() || state.GetAttemptsUsed() != 1 || len(state.GetHistory()) != 1 {
		t.Errorf("attempt count: %v", state)
	}
	sent := s.consoleLine(t, key)["idempotency_key"]
	if first.IdempotencyKey == "" || first.IdempotencyKey != sent ||
		second.IdempotencyKey != sent || state.GetIdempotencyKey() != sent {
		t.Errorf("idempotency keys: receiver got %v, answers %q %q %q",
			sent, first.IdempotencyKey, second.IdempotencyKey, state.GetIdempotencyKey())
	}
	cleared, err := client.Clear(ctx, key, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := cleared.GetClearedChannels(); len(got) != 1 || got[0] != "console" {
		t.Errorf("cleared: %v", cleared)
	}
}

func TestListReceivers(t *testing.T) {
	s := startSidecar(t)
	client := dial(t, sendonce.Options{Address: s.address})
	ctx := context.Background()
	if _, err := client.Deliver(ctx, uid(t), "console", note); err != nil {
		t.Fatal(err)
	}

	receivers, err := client.ListReceivers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(receivers) != 1 {
		t.Fatalf("receivers: %v", receivers)
	}
	r := receivers[0]
	if r.GetName() != "console" || r.GetType() != "console" ||
		r.GetCircuit() != sendoncev1.CircuitState_CIRCUIT_STATE_CLOSED ||
		r.GetAttemptsStarted() != 1 || r.GetAttemptsSucceeded() != 1 || r.GetMaxAttempts() != 5 {
		t.Errorf("console: %v", r)
	}
}

func TestListDeliveriesPages(t *testing.T) {
	s := startSidecar(t)
	client := dial(t, sendonce.Options{Address: s.address})
	ctx := context.Background()
	prefix := uid(t)
	for _, suffix := range []string{"-a", "-b", "-c"} {
		if _, err := client.Deliver(ctx, prefix+suffix, "console", note); err != nil {
			t.Fatal(err)
		}
	}

	request := &sendoncev1.ListDeliveriesRequest{
		State: sendoncev1.DeliveryState_DELIVERY_STATE_DELIVERED, Channel: "console", PageSize: 2,
	}
	var uids []string
	for pages := 1; ; pages++ {
		page, err := client.ListDeliveries(ctx, request)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range page.GetDeliveries() {
			uids = append(uids, d.GetUid())
			if d.GetIdempotencyKey() != s.consoleLine(t, d.GetUid())["idempotency_key"] {
				t.Errorf("idempotency key of %s: %q", d.GetUid(), d.GetIdempotencyKey())
			}
		}
		if page.GetNextPageToken() == "" {
			if pages != 2 {
				t.Errorf("%d pages of 2 for 3 deliveries", pages)
			}
			break
		}
		request.PageToken = page.GetNextPageToken()
	}
	if strings.Join(uids, " ") != prefix+"-c "+prefix+"-b "+prefix+"-a" {
		t.Errorf("newest first: %v", uids)
	}

	_, err := client.ListDeliveries(ctx, &sendoncev1.ListDeliveriesRequest{PageToken: "nope"})
	if e, ok := sendonce.AsError(err); !ok || e.Code != codes.InvalidArgument ||
		!strings.Contains(e.Message, "page_token") {
		t.Errorf("a bad token: %v", err)
	}
}

func TestPersistedAttemptsCount(t *testing.T) {
	s := startSidecar(t)
	client := dial(t, sendonce.Options{Address: s.address})

	result, err := client.Deliver(context.Background(), uid(t), "console", note,
		sendonce.WithPersistedAttempts(2))
	if err != nil {
		t.Fatal(err)
	}
	if result.Attempt != 3 || result.AttemptsUsed != 3 {
		t.Errorf("persisted 2, then: %+v", result)
	}
}

func TestErrorsCarryTheirCode(t *testing.T) {
	s := startSidecar(t)
	client := dial(t, sendonce.Options{Address: s.address})
	ctx := context.Background()
	key := uid(t)
	if _, err := client.Deliver(ctx, key, "console", note); err != nil {
		t.Fatal(err)
	}

	// The details (Google AIP-193) a program reads: ErrorInfo's reason and domain, and for
	// INVALID_ARGUMENT the BadRequest's field.
	cases := []struct {
		name    string
		call    func() error
		code    codes.Code
		message string
		reason  string
		field   string
	}{
		{"empty uid", func() error {
			_, err := client.Deliver(ctx, "", "console", note)
			return err
		}, codes.InvalidArgument, "uid", "INVALID_ARGUMENT", "uid"},
		{"unknown channel", func() error {
			_, err := client.Deliver(ctx, key, "slack", note)
			return err
		}, codes.NotFound, "no receiver named 'slack'", "UNKNOWN_CHANNEL", ""},
		{"another payload", func() error {
			_, err := client.Deliver(ctx, key, "console", &sendoncev1.Notification{Subject: "other"})
			return err
		}, codes.FailedPrecondition, "different payload", "PAYLOAD_MISMATCH", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.call()
			e, ok := sendonce.AsError(err)
			if !ok {
				t.Fatalf("not a *sendonce.Error: %v", err)
			}
			if e.Code != c.code || !strings.Contains(e.Message, c.message) || e.Retryable() {
				t.Errorf("%s: got %v", c.name, e)
			}
			if e.Reason != c.reason || e.Domain != "sendonce.dev" {
				t.Errorf("%s: ErrorInfo %q in %q, want %q in sendonce.dev", c.name, e.Reason, e.Domain, c.reason)
			}
			var fields []string
			for _, v := range e.Violations {
				fields = append(fields, v.Field)
			}
			if want := []string{c.field}; c.field != "" && !slices.Equal(fields, want) {
				t.Errorf("%s: field violations %v, want %v", c.name, fields, want)
			}
			if c.field == "" && len(fields) != 0 {
				t.Errorf("%s: unexpected field violations %v", c.name, fields)
			}
		})
	}
}

func TestTokenIsSentAndRequired(t *testing.T) {
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("s3cret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startSidecar(t, "--auth-token-file", token)
	ctx := context.Background()

	_, err := dial(t, sendonce.Options{Address: s.address}).Deliver(ctx, uid(t), "console", note)
	if e, ok := sendonce.AsError(err); !ok || e.Code != codes.Unauthenticated {
		t.Fatalf("without the token: %v", err)
	}
	t.Setenv("SENDONCE_TOKEN", "s3cret-token") // read by Dial, as the shipped manifests set it
	result, err := dial(t, sendonce.Options{Address: s.address}).Deliver(ctx, uid(t), "console", note)
	if err != nil || !result.Delivered() {
		t.Fatalf("with the token: %v %+v", err, result)
	}
}

func TestUnixSocket(t *testing.T) {
	s := startSidecar(t)
	client := dial(t, sendonce.Options{Address: "unix://" + s.socket})

	result, err := client.Deliver(context.Background(), uid(t), "console", note)
	if err != nil || !result.Delivered() {
		t.Fatalf("over the unix socket: %v %+v", err, result)
	}
}

// deadlines records the deadline each call leaves with.
type deadlines map[string]time.Duration

func (d deadlines) record(ctx context.Context, method string, req, reply any,
	cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if deadline, ok := ctx.Deadline(); ok {
		d[method[strings.LastIndex(method, "/")+1:]] = time.Until(deadline)
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

func TestCallsHaveDeadlinesByDefault(t *testing.T) {
	s := startSidecar(t)
	seen := deadlines{}
	client := dial(t, sendonce.Options{
		Address:     s.address,
		DialOptions: []grpc.DialOption{grpc.WithUnaryInterceptor(seen.record)},
	})
	ctx := context.Background()
	key := uid(t)
	if _, err := client.Deliver(ctx, key, "console", note); err != nil {
		t.Fatal(err)
	}
	if _, err := client.AttemptCount(ctx, key, "console", 0); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := client.Clear(short, key, true); err != nil {
		t.Fatal(err)
	}

	within := func(got, want time.Duration) bool { return got <= want && got > want-5*time.Second }
	if !within(seen["Deliver"], 30*time.Second) || !within(seen["AttemptCount"], 5*time.Second) {
		t.Errorf("default deadlines: %v", seen)
	}
	if seen["Clear"] > 2*time.Second {
		t.Errorf("the caller's own deadline wins: %v", seen)
	}
}

func TestADeadlinePassedIsAnError(t *testing.T) {
	s := startSidecar(t)
	client := dial(t, sendonce.Options{Address: s.address})
	ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	<-ctx.Done()

	_, err := client.Deliver(ctx, uid(t), "console", note)
	e, ok := sendonce.AsError(err)
	if !ok || e.Code != codes.DeadlineExceeded || !e.Retryable() {
		t.Fatalf("got %v", err)
	}
	if status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("status.Code reads the original status: %v", status.Code(err))
	}
}
