package sendonce

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is an RPC error of the sidecar, with the details it sent (Google AIP-193). A delivery
// failure is never an Error: it is a DeliverResult.
//
// UNAVAILABLE and RESOURCE_EXHAUSTED mean nothing was decided: retry with the controller's
// usual backoff (Deliver is idempotent). The other codes mean the request or the token must
// change.
type Error struct {
	Code    codes.Code
	Message string
	// Reason and Domain come from google.rpc.ErrorInfo, when the sidecar sends one.
	Reason string
	Domain string
	// Violations come from google.rpc.BadRequest: which field, and why.
	Violations []FieldViolation
	// RetryDelay comes from google.rpc.RetryInfo: how long to wait before trying again.
	RetryDelay time.Duration

	status *status.Status
}

// FieldViolation names a field of the request and what is wrong with it.
type FieldViolation struct {
	Field       string
	Description string
}

func (e *Error) Error() string { return fmt.Sprintf("sendonce: %s: %s", e.Code, e.Message) }

// GRPCStatus lets status.FromError and status.Code read the original status.
func (e *Error) GRPCStatus() *status.Status { return e.status }

// Retryable reports whether the same call may succeed later unchanged.
func (e *Error) Retryable() bool {
	return e.Code == codes.Unavailable || e.Code == codes.ResourceExhausted ||
		e.Code == codes.DeadlineExceeded
}

// AsError returns the *Error in err's chain, if any.
func AsError(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}

func wrap(err error) error {
	s, ok := status.FromError(err)
	if !ok {
		return err
	}
	e := &Error{Code: s.Code(), Message: s.Message(), status: s}
	for _, detail := range s.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			e.Reason, e.Domain = d.GetReason(), d.GetDomain()
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				e.Violations = append(e.Violations, FieldViolation{v.GetField(), v.GetDescription()})
			}
		case *errdetails.RetryInfo:
			e.RetryDelay = d.GetRetryDelay().AsDuration()
		}
	}
	return e
}
