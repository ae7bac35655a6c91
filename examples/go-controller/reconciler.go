package notifier

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sendonce/sendonce/client/go/sendonce"
	sendoncev1 "github.com/sendonce/sendonce/client/go/sendoncev1"
)

// Reconciler delivers each NotificationRequest through the sendonce sidecar, which owns the
// attempt count: the status only records the sidecar's answers.
type Reconciler struct {
	// Client reads from the replica's cache and writes to the API server.
	Client   client.Client
	Sendonce *sendonce.Client
}

// Reconcile makes at most one attempt through the sidecar and records its answer.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var obj NotificationRequest
	if err := r.Client.Get(ctx, req.NamespacedName, &obj); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if obj.Status.Final {
		return ctrl.Result{}, nil
	}
	recorded := obj.DeepCopy()
	result, err := r.Sendonce.Deliver(ctx, string(obj.UID), obj.Spec.Channel,
		&sendoncev1.Notification{Subject: obj.Spec.Subject, Body: obj.Spec.Body},
		sendonce.WithPersistedAttempts(obj.Status.Attempts))
	if err != nil {
		// Nothing was decided (or the request must change): the controller's error backoff.
		return ctrl.Result{}, err
	}
	obj.Status.Attempts = max(obj.Status.Attempts, result.AttemptsUsed)
	obj.Status.Final = result.Final
	obj.Status.LastError = result.LastError
	switch {
	case result.Delivered():
		obj.Status.Phase = PhaseDelivered
	case result.GaveUp():
		obj.Status.Phase = PhaseGaveUp
	default:
		obj.Status.Phase = PhaseRetrying
	}
	if obj.Status != recorded.Status {
		if err := r.Client.Status().Patch(ctx, &obj, client.MergeFrom(recorded)); err != nil {
			return ctrl.Result{}, err
		}
	}
	if !result.Final {
		return ctrl.Result{RequeueAfter: result.RequeueAfter(time.Second)}, nil
	}
	// The final status is recorded: the sidecar may forget the key. Without force it keeps a
	// tombstone, so a reconcile from a cache that has not seen the final status yet still
	// sends nothing.
	if _, err := r.Sendonce.Clear(ctx, string(obj.UID), false); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{}, nil
}

// StatusOnlyReconciler is the seed's controller: it counts attempts in the object's status and
// posts to the receiver itself. Two reconciles that read the same stale status both send, and
// each writes back the count it read plus one.
type StatusOnlyReconciler struct {
	// Client reads from the replica's cache and writes to the API server.
	Client      client.Client
	HTTP        *http.Client
	URL         string
	MaxAttempts int
	Backoff     time.Duration
}

// Reconcile sends one attempt unless the status says the request is final or out of attempts.
func (r *StatusOnlyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var obj NotificationRequest
	if err := r.Client.Get(ctx, req.NamespacedName, &obj); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if obj.Status.Final {
		return ctrl.Result{}, nil
	}
	recorded := obj.DeepCopy()
	if obj.Status.Attempts >= r.MaxAttempts {
		obj.Status.Phase, obj.Status.Final = PhaseGaveUp, true
	} else {
		obj.Status.Attempts++
		if err := r.post(ctx, &obj); err != nil {
			obj.Status.LastError = err.Error()
			if obj.Status.Attempts >= r.MaxAttempts {
				obj.Status.Phase, obj.Status.Final = PhaseGaveUp, true
			} else {
				obj.Status.Phase = PhaseRetrying
			}
		} else {
			obj.Status.Phase, obj.Status.Final, obj.Status.LastError = PhaseDelivered, true, ""
		}
	}
	if err := r.Client.Status().Patch(ctx, &obj, client.MergeFrom(recorded)); err != nil {
		return ctrl.Result{}, err
	}
	if obj.Status.Final {
		return ctrl.Result{}, nil
	}
	return ctrl.Result{RequeueAfter: r.Backoff}, nil
}

func (r *StatusOnlyReconciler) post(ctx context.Context, obj *NotificationRequest) error {
	document, err := json.Marshal(map[string]any{
		"uid": obj.UID, "channel": obj.Spec.Channel, "attempt": obj.Status.Attempts,
		"subject": obj.Spec.Subject, "body": obj.Spec.Body,
	})
	if err != nil {
		return err
	}
	request, err := http.NewRequestWithContext(ctx, http.MethodPost, r.URL, bytes.NewReader(document))
	if err != nil {
		return err
	}
	request.Header.Set("Content-Type", "application/json")
	response, err := r.HTTP.Do(request)
	if err != nil {
		return err
	}
	defer response.Body.Close()
	if response.StatusCode/100 != 2 {
		return fmt.Errorf("HTTP %d", response.StatusCode)
	}
	return nil
}
