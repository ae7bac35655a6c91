// Package sendonce is the Go client of the sendonce delivery sidecar.
//
// A controller hands each delivery to the sidecar and trusts its answer:
//
//	client, err := sendonce.Dial(sendonce.Options{}) // $SENDONCE_ADDRESS, else 127.0.0.1:50051
//	...
//	result, err := client.Deliver(ctx, string(obj.UID), "ops", &sendoncev1.Notification{Subject: "..."},
//		sendonce.WithPersistedAttempts(obj.Status.Attempts))
//	if err != nil { return ctrl.Result{}, err } // an RPC error: nothing was decided, requeue
//	if !result.Final { return ctrl.Result{RequeueAfter: result.RequeueAfter(time.Second)}, nil }
//
// Every call has a deadline (30 s for Deliver, 5 s otherwise, unless the context has one), and
// gRPC retries calls that fail with UNAVAILABLE (Deliver is idempotent, so a retry is safe).
package sendonce

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	sendoncev1 "github.com/sendonce/sendonce/client/go/sendoncev1"
)

// DefaultAddress is where a sidecar listens unless told otherwise.
const DefaultAddress = "127.0.0.1:50051"

const (
	defaultDeliverTimeout = 30 * time.Second
	defaultTimeout        = 5 * time.Second
)

// retryServiceConfig lets gRPC itself retry calls that fail with UNAVAILABLE: up to 5 tries,
// 0.1 s to 2 s apart, within the call's deadline. Safe for every method: Deliver is
// idempotent, Clear converges and the others only read.
const retryServiceConfig = `{
  "methodConfig": [{
    "name": [{"service": "sendonce.v1.DeliveryService"}],
    "retryPolicy": {
      "maxAttempts": 5,
      "initialBackoff": "0.1s",
      "maxBackoff": "2s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
}`

// Options configure a Client. The zero value talks plaintext to $SENDONCE_ADDRESS (else
// DefaultAddress) with the token of $SENDONCE_TOKEN, if set.
type Options struct {
	// Address is host:port or unix:///path/to/socket.
	Address string
	// Token is sent as "authorization: Bearer <token>" on every call.
	Token string
	// TLS, when set, is used for the connection (mutual TLS: set Certificates too).
	TLS *tls.Config
	// DeliverTimeout bounds a Deliver whose context has no deadline (default 30 s).
	DeliverTimeout time.Duration
	// Timeout bounds the calls other than Deliver whose context has no deadline (default 5 s).
	Timeout time.Duration
	// DialOptions are appended to the client's own (e.g. interceptors).
	DialOptions []grpc.DialOption
}

// Client calls one sidecar. It is safe for concurrent use.
type Client struct {
	conn           *grpc.ClientConn
	stub           sendoncev1.DeliveryServiceClient
	deliverTimeout time.Duration
	timeout        time.Duration
}

// Dial makes a Client; the connection itself is made on the first call.
func Dial(options Options) (*Client, error) {
	address := options.Address
	if address == "" {
		address = os.Getenv("SENDONCE_ADDRESS")
	}
	if address == "" {
		address = DefaultAddress
	}
	token := options.Token
	if token == "" {
		token = os.Getenv("SENDONCE_TOKEN")
	}
	transport := insecure.NewCredentials()
	if options.TLS != nil {
		transport = credentials.NewTLS(options.TLS)
	}
	dial := []grpc.DialOption{
		grpc.WithTransportCredentials(transport),
		grpc.WithDefaultServiceConfig(retryServiceConfig),
	}
	if token != "" {
		dial = append(dial, grpc.WithPerRPCCredentials(bearer{token: token, tls: options.TLS != nil}))
	}
	dial = append(dial, options.DialOptions...)
	conn, err := grpc.NewClient(address, dial...)
	if err != nil {
		return nil, fmt.Errorf("sendonce: %s: %w", address, err)
	}
	return &Client{
		conn:           conn,
		stub:           sendoncev1.NewDeliveryServiceClient(conn),
		deliverTimeout: orDefault(options.DeliverTimeout, defaultDeliverTimeout),
		timeout:        orDefault(options.Timeout, defaultTimeout),
	}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// DeliverOption sets an optional field of a Deliver call.
type DeliverOption func(*sendoncev1.DeliverRequest)

// WithPersistedAttempts passes the attempts the caller has recorded: the sidecar counts
// max(its own record, this), so a caller that knows more is never undercounted.
func WithPersistedAttempts(attempts int) DeliverOption {
	return func(r *sendoncev1.DeliverRequest) { r.PersistedAttempts = uint32(max(attempts, 0)) }
}

// WithRetryPolicy overrides the receiver's retry policy for this key.
func WithRetryPolicy(policy *sendoncev1.RetryPolicy) DeliverOption {
	return func(r *sendoncev1.DeliverRequest) { r.RetryPolicy = policy }
}

// Deliver makes at most one attempt for the key (uid, channel) and answers what happened. A
// failed delivery is a result (Outcome FAILED, EXHAUSTED, ...), never an error; an error
// means nothing was decided (UNAVAILABLE) or the request must change (see *Error).
func (c *Client) Deliver(
	ctx context.Context,
	uid, channel string,
	notification *sendoncev1.Notification,
	options ...DeliverOption,
) (*DeliverResult, error) {
	request := &sendoncev1.DeliverRequest{Uid: uid, Channel: channel, Notification: notification}
	for _, option := range options {
		option(request)
	}
	ctx, cancel := withDefaultTimeout(ctx, c.deliverTimeout)
	defer cancel()
	response, err := c.stub.Deliver(ctx, request)
	if err != nil {
		return nil, wrap(err)
	}
	return newDeliverResult(response), nil
}

// AttemptCount reads the state of a key without changing it.
func (c *Client) AttemptCount(
	ctx context.Context, uid, channel string, persistedAttempts int,
) (*sendoncev1.AttemptCountResponse, error) {
	ctx, cancel := withDefaultTimeout(ctx, c.timeout)
	defer cancel()
	response, err := c.stub.AttemptCount(ctx, &sendoncev1.AttemptCountRequest{
		Uid: uid, Channel: channel, PersistedAttempts: uint32(max(persistedAttempts, 0)),
	})
	if err != nil {
		return nil, wrap(err)
	}
	return response, nil
}

// Clear forgets the uid's keys on the channels (all of them when none is given) once the
// controller has recorded their final status. Without force a tombstone stays for the
// sidecar's clear grace, so a late reconcile from a stale cache still sends nothing.
func (c *Client) Clear(
	ctx context.Context, uid string, force bool, channels ...string,
) (*sendoncev1.ClearResponse, error) {
	ctx, cancel := withDefaultTimeout(ctx, c.timeout)
	defer cancel()
	response, err := c.stub.Clear(ctx, &sendoncev1.ClearRequest{
		Uid: uid, Channels: channels, Force: force,
	})
	if err != nil {
		return nil, wrap(err)
	}
	return response, nil
}

// ListReceivers lists the configured receivers by name: type, circuit breaker and the
// attempts the answering sidecar process made through each since it started. It never shows
// a receiver's settings (URLs, tokens, addresses).
func (c *Client) ListReceivers(ctx context.Context) ([]*sendoncev1.Receiver, error) {
	ctx, cancel := withDefaultTimeout(ctx, c.timeout)
	defer cancel()
	response, err := c.stub.ListReceivers(ctx, &sendoncev1.ListReceiversRequest{})
	if err != nil {
		return nil, wrap(err)
	}
	return response.GetReceivers(), nil
}

// ListDeliveries answers one page of the keys the sidecar's store holds, newest change
// first, filtered by the request's state, channel, uid and time. Pass the answer's
// NextPageToken as the request's PageToken (other fields unchanged) for the next page; an
// empty one means the list is done. A page may be short and still have a next one.
func (c *Client) ListDeliveries(
	ctx context.Context, request *sendoncev1.ListDeliveriesRequest,
) (*sendoncev1.ListDeliveriesResponse, error) {
	ctx, cancel := withDefaultTimeout(ctx, c.timeout)
	defer cancel()
	response, err := c.stub.ListDeliveries(ctx, request)
	if err != nil {
		return nil, wrap(err)
	}
	return response, nil
}

func withDefaultTimeout(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, timeout)
}

func orDefault(value, fallback time.Duration) time.Duration {
	if value > 0 {
		return value
	}
	return fallback
}

// bearer sends the token on every call. Over plaintext too: the sidecar is reached on
// loopback or a unix socket inside the pod.
type bearer struct {
	token string
	tls   bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

func (b bearer) RequireTransportSecurity() bool { return b.tls }

var _ credentials.PerRPCCredentials = bearer{}
