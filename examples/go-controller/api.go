// Package notifier is the seed's story told in Go: a controller-runtime reconciler for
// NotificationRequest objects, once counting attempts in the object's status alone
// (StatusOnlyReconciler) and once handing each delivery to the sendonce sidecar (Reconciler).
//
// story_test.go runs both under two replicas with stale caches and several workers each, against
// a receiver that fails first and then succeeds, and counts what the receiver saw.
package notifier

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion of the NotificationRequest kind.
var GroupVersion = schema.GroupVersion{Group: "notify.example.com", Version: "v1"}

// AddToScheme registers NotificationRequest and its list with a scheme.
func AddToScheme(scheme *runtime.Scheme) error {
	scheme.AddKnownTypes(GroupVersion, &NotificationRequest{}, &NotificationRequestList{})
	metav1.AddToGroupVersion(scheme, GroupVersion)
	return nil
}

// NotificationRequest asks for one notification on one channel (a receiver of the sidecar).
type NotificationRequest struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   NotificationRequestSpec   `json:"spec"`
	Status NotificationRequestStatus `json:"status,omitempty"`
}

// NotificationRequestSpec is what to send, and where. It never changes: a key only ever
// delivers the payload it first saw.
type NotificationRequestSpec struct {
	Channel string `json:"channel"`
	Subject string `json:"subject"`
	Body    string `json:"body,omitempty"`
}

// Phases of a NotificationRequest.
const (
	PhaseRetrying  = "Retrying"
	PhaseDelivered = "Delivered"
	PhaseGaveUp    = "GaveUp"
)

// NotificationRequestStatus is what the controller has recorded.
type NotificationRequestStatus struct {
	Attempts  int    `json:"attempts,omitempty"`
	Phase     string `json:"phase,omitempty"`
	Final     bool   `json:"final,omitempty"`
	LastError string `json:"lastError,omitempty"`
}

// NotificationRequestList is a list of NotificationRequest.
type NotificationRequestList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`

	Items []NotificationRequest `json:"items"`
}

// DeepCopyInto copies in into out; Spec and Status hold values only.
func (in *NotificationRequest) DeepCopyInto(out *NotificationRequest) {
	*out = *in
	in.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
}

// DeepCopy returns a copy of in.
func (in *NotificationRequest) DeepCopy() *NotificationRequest {
	if in == nil {
		return nil
	}
	out := new(NotificationRequest)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyObject implements runtime.Object.
func (in *NotificationRequest) DeepCopyObject() runtime.Object { return in.DeepCopy() }

// DeepCopyInto copies in into out.
func (in *NotificationRequestList) DeepCopyInto(out *NotificationRequestList) {
	*out = *in
	in.ListMeta.DeepCopyInto(&out.ListMeta)
	if in.Items != nil {
		out.Items = make([]NotificationRequest, len(in.Items))
		for i := range in.Items {
			in.Items[i].DeepCopyInto(&out.Items[i])
		}
	}
}

// DeepCopyObject implements runtime.Object.
func (in *NotificationRequestList) DeepCopyObject() runtime.Object {
	if in == nil {
		return nil
	}
	out := new(NotificationRequestList)
	in.DeepCopyInto(out)
	return out
}
