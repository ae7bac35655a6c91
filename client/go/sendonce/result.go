package sendonce

import (
	"time"

	sendoncev1 "github.com/sendonce/sendonce/client/go/sendoncev1"
)

// DeliverResult is the sidecar's answer to a Deliver call.
type DeliverResult struct {
	Outcome sendoncev1.Outcome
	// Attempt is the attempt the answer refers to (0 if none was ever made).
	Attempt      int
	AttemptsUsed int
	MaxAttempts  int
	// RetryAfter is how long to wait before calling again; 0 when nothing is due to wait.
	RetryAfter time.Duration
	LastError  string
	// Shared: the answer is that of a concurrent call's attempt.
	Shared bool
	// Final: nothing more will ever be sent for the key.
	Final   bool
	Receipt *sendoncev1.Receipt
	// IdempotencyKey is what the receiver sees for the key on every attempt (the webhook's
	// Idempotency-Key header, PagerDuty's dedup_key, ...): find the notification there.
	IdempotencyKey string
}

func newDeliverResult(r *sendoncev1.DeliverResponse) *DeliverResult {
	result := &DeliverResult{
		Outcome:        r.GetOutcome(),
		Attempt:        int(r.GetAttempt()),
		AttemptsUsed:   int(r.GetAttemptsUsed()),
		MaxAttempts:    int(r.GetMaxAttempts()),
		LastError:      r.GetLastError(),
		Shared:         r.GetShared(),
		Final:          r.GetFinal(),
		Receipt:        r.GetReceipt(),
		IdempotencyKey: r.GetIdempotencyKey(),
	}
	if r.RetryAfter != nil {
		result.RetryAfter = r.GetRetryAfter().AsDuration()
	}
	return result
}

// Delivered reports whether the notification reached the receiver (now or earlier).
func (r *DeliverResult) Delivered() bool {
	return r.Outcome == sendoncev1.Outcome_OUTCOME_DELIVERED ||
		r.Outcome == sendoncev1.Outcome_OUTCOME_ALREADY_DELIVERED
}

// GaveUp reports whether the key is final without a delivery (permanent failure or budget
// spent): surface LastError, nothing more will be sent.
func (r *DeliverResult) GaveUp() bool { return r.Final && !r.Delivered() }

// RequeueAfter is when to reconcile again for a result that is not final: RetryAfter, or
// fallback when the sidecar gave none. 0 for a final result.
func (r *DeliverResult) RequeueAfter(fallback time.Duration) time.Duration {
	if r.Final {
		return 0
	}
	if r.RetryAfter > 0 {
		return r.RetryAfter
	}
	return fallback
}
