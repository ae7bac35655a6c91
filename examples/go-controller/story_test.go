package notifier_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/sendonce/sendonce/client/go/sendonce"
	notifier "github.com/sendonce/sendonce/examples/go-controller"
)

const (
	notifications = 40
	maxAttempts   = 5
	replicas      = 2
	// Workers per replica: controller-runtime never runs one key on two workers of one
	// controller, so concurrency on a key comes from the other replica and from stale reads.
	workersPerReplica = 4
	backoff           = 50 * time.Millisecond
	channel           = "ops-webhook"
)

// failFirst is how many requests the receiver fails for notification i before it succeeds:
// 0 to 7, so some succeed at once, some on a later attempt, and some never within 5.
func failFirst(i int) int { return i % 8 }

func uid(i int) string { return fmt.Sprintf("uid-%02d", i) }

// cluster is the API server (controller-runtime's fake client) and what its watches carry to
// each replica: every version of each object, and an event on each replica's queue when an
// object changes.
//
// The staleness is made, not waited for: the first read of an object by a replica after the
// object changed returns the version before the change; later reads return the latest one.
// Real informers lag by milliseconds to seconds, so a requeue or the other replica's write
// sometimes beats them; here it always does, and every run shows the same bug.
type cluster struct {
	api client.WithWatch

	mu       sync.Mutex
	versions map[types.NamespacedName][]notifier.NotificationRequest
	// seen[r][key]: replica r has read key since its latest change (its next read is fresh).
	seen     [replicas]map[types.NamespacedName]bool
	queues   [replicas]workqueue.TypedRateLimitingInterface[reconcile.Request]
	inFlight int
	settled  chan struct{}
	closed   bool
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := notifier.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	c := &cluster{
		versions: map[types.NamespacedName][]notifier.NotificationRequest{},
		settled:  make(chan struct{}),
	}
	builder := fake.NewClientBuilder().WithScheme(scheme).
		WithStatusSubresource(&notifier.NotificationRequest{})
	for i := range notifications {
		obj := notifier.NotificationRequest{
			ObjectMeta: metav1.ObjectMeta{
				Namespace: "default", Name: fmt.Sprintf("backup-failed-%02d", i), UID: types.UID(uid(i)),
			},
			Spec: notifier.NotificationRequestSpec{
				Channel: channel, Subject: fmt.Sprintf("Backup of db-%d failed", i), Body: "exit status 3",
			},
		}
		builder = builder.WithObjects(obj.DeepCopy())
		c.versions[client.ObjectKeyFromObject(&obj)] = []notifier.NotificationRequest{obj}
	}
	c.api = builder.Build()
	for r := range replicas {
		c.seen[r] = map[types.NamespacedName]bool{}
	}
	return c
}

// client is replica r's client: reads from its stale cache, status writes to the API server.
func (c *cluster) client(r int) client.Client {
	return interceptor.NewClient(c.api, interceptor.Funcs{
		Get: func(_ context.Context, _ client.WithWatch, key client.ObjectKey, obj client.Object,
			_ ...client.GetOption) error {
			c.mu.Lock()
			defer c.mu.Unlock()
			versions := c.versions[key]
			if len(versions) == 0 {
				return apierrors.NewNotFound(notifier.GroupVersion.WithResource("notificationrequests").GroupResource(), key.Name)
			}
			version := versions[len(versions)-1]
			if !c.seen[r][key] && len(versions) > 1 {
				version = versions[len(versions)-2]
			}
			c.seen[r][key] = true
			version.DeepCopyInto(obj.(*notifier.NotificationRequest))
			return nil
		},
		SubResourcePatch: func(ctx context.Context, api client.Client, subResource string,
			obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
			c.mu.Lock()
			if err := api.SubResource(subResource).Patch(ctx, obj, patch, opts...); err != nil {
				c.mu.Unlock()
				return err
			}
			key := client.ObjectKeyFromObject(obj)
			var now notifier.NotificationRequest
			if err := api.Get(ctx, key, &now); err != nil {
				c.mu.Unlock()
				return err
			}
			versions := c.versions[key]
			changed := now.Status != versions[len(versions)-1].Status
			if changed {
				c.versions[key] = append(versions, now)
				for r := range replicas {
					c.seen[r][key] = false
				}
			}
			queues := c.queues
			c.mu.Unlock()
			if changed { // the watch event, on every replica that has started
				for _, queue := range queues {
					if queue != nil {
						queue.Add(reconcile.Request{NamespacedName: key})
					}
				}
			}
			return nil
		},
	})
}

// source is replica r's watch: the initial list, then every change (see client).
func (c *cluster) source(r int) source.Source {
	return source.Func(func(_ context.Context, queue workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
		c.mu.Lock()
		c.queues[r] = queue
		keys := make([]types.NamespacedName, 0, len(c.versions))
		for key := range c.versions {
			keys = append(keys, key)
		}
		c.mu.Unlock()
		for _, key := range keys {
			queue.Add(reconcile.Request{NamespacedName: key})
		}
		return nil
	})
}

// track counts the reconciles in flight; after each it checks whether the cluster settled.
func (c *cluster) track(inner reconcile.Reconciler) reconcile.Reconciler {
	return reconcile.Func(func(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
		c.mu.Lock()
		c.inFlight++
		c.mu.Unlock()
		defer func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.inFlight--
			if !c.closed && c.settledLocked() {
				c.closed = true
				close(c.settled)
			}
		}()
		return inner.Reconcile(ctx, req)
	})
}

// settledLocked: nothing more can be sent, ever. Every object is final in the API server and
// every replica has read it since its last change, so every later read is fresh and final;
// no reconcile is running that read an older version.
func (c *cluster) settledLocked() bool {
	if c.inFlight > 0 {
		return false
	}
	for key, versions := range c.versions {
		if !versions[len(versions)-1].Status.Final {
			return false
		}
		for r := range replicas {
			if !c.seen[r][key] {
				return false
			}
		}
	}
	return true
}

func (c *cluster) latest(i int) notifier.NotificationRequest {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, versions := range c.versions {
		if latest := versions[len(versions)-1]; string(latest.UID) == uid(i) {
			return latest
		}
	}
	panic("no notification " + uid(i))
}

// run starts one controller per replica, each with workersPerReplica workers and its own
// reconciler, and returns once the cluster has settled.
func (c *cluster) run(t *testing.T, name string, reconciler func(r int, cached client.Client) reconcile.Reconciler) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var stopped sync.WaitGroup
	defer func() {
		cancel()
		stopped.Wait()
	}()
	for r := range replicas {
		ctl, err := controller.NewTypedUnmanaged(fmt.Sprintf("%s-replica-%d", name, r), controller.TypedOptions[reconcile.Request]{
			Reconciler:              c.track(reconciler(r, c.client(r))),
			MaxConcurrentReconciles: workersPerReplica,
			SkipNameValidation:      new(true),
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := ctl.Watch(c.source(r)); err != nil {
			t.Fatal(err)
		}
		stopped.Go(func() {
			if err := ctl.Start(ctx); err != nil {
				t.Errorf("replica %d: %v", r, err)
			}
		})
	}
	select {
	case <-c.settled:
	case <-time.After(2 * time.Minute):
		t.Fatalf("%s: not settled after 2 minutes", name)
	}
}

// tally is what the receiver saw, over all notifications.
type tally struct {
	overBudget, maxRequests, duplicated, maxSuccesses int
}

func count(rc *receiver) tally {
	var s tally
	for i := range notifications {
		requests, successes := rc.counts(uid(i))
		if requests > maxAttempts {
			s.overBudget++
		}
		if successes > 1 {
			s.duplicated++
		}
		s.maxRequests = max(s.maxRequests, requests)
		s.maxSuccesses = max(s.maxSuccesses, successes)
	}
	return s
}

func startReceiver(t *testing.T) (*receiver, string) {
	t.Helper()
	fails := map[string]int{}
	for i := range notifications {
		fails[uid(i)] = failFirst(i)
	}
	rc := newReceiver(fails)
	server := httptest.NewServer(rc)
	t.Cleanup(server.Close)
	return rc, server.URL + "/hooks/sendonce"
}

// TestTwoStaleReplicas is the seed's story: two replicas with stale caches and several workers
// each deliver 40 notifications to a receiver that fails first. Counting attempts in the
// status alone, the receiver gets more than max_attempts requests and duplicate successes;
// through sendonce, at most max_attempts requests and at most one success each.
func TestTwoStaleReplicas(t *testing.T) {
	ctrllog.SetLogger(logr.Discard())

	// Without sendonce: the status is the only count.
	statusOnly, url := startReceiver(t)
	newCluster(t).run(t, "status-only", func(_ int, cached client.Client) reconcile.Reconciler {
		return &notifier.StatusOnlyReconciler{
			Client: cached, HTTP: &http.Client{Timeout: 10 * time.Second}, URL: url,
			MaxAttempts: maxAttempts, Backoff: backoff,
		}
	})
	without := count(statusOnly)

	// With sendonce: one sidecar per replica, sharing their state in Redis (the deployment for
	// several replicas); without a redis-server, both replicas call one sidecar.
	viaSidecar, url := startReceiver(t)
	config := filepath.Join(t.TempDir(), "receivers.toml")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(`
[[receivers]]
name = %q
type = "webhook"
[receivers.retry]
max_attempts = %d
initial_backoff = %g
max_backoff = %g
multiplier = 1.0
jitter = 0.0
[receivers.breaker]
failures = 0
[receivers.settings]
url = %q
`, channel, maxAttempts, backoff.Seconds(), backoff.Seconds(), url)), 0o600); err != nil {
		t.Fatal(err)
	}
	var clients [replicas]*sendonce.Client
	redisURL := startRedis(t)
	topology := "two sidecars on one Redis"
	for r := range replicas {
		if redisURL == "" && r > 0 {
			topology = "both replicas on one sidecar: no redis-server on PATH"
			clients[r] = clients[0]
			continue
		}
		args := []string{"--config", config}
		if redisURL != "" {
			args = append(args, "--store", redisURL)
		}
		client, err := sendonce.Dial(sendonce.Options{Address: startSidecar(t, args...)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = client.Close() })
		clients[r] = client
	}
	withSidecar := newCluster(t)
	withSidecar.run(t, "sendonce", func(r int, cached client.Client) reconcile.Reconciler {
		return &notifier.Reconciler{Client: cached, Sendonce: clients[r]}
	})
	with := count(viaSidecar)

	t.Logf("without sendonce: %d notifications, %d got more than %d attempts (max %d), %d delivered more than once (max %d times)",
		notifications, without.overBudget, maxAttempts, without.maxRequests, without.duplicated, without.maxSuccesses)
	t.Logf("with sendonce (%s): max %d attempts, %d delivered more than once",
		topology, with.maxRequests, with.duplicated)

	// The bug, every run: by construction of the staleness, the first read after the final
	// status write sees the version before it, so each notification that never succeeds gets
	// a sixth request and each that succeeds at once gets a second success.
	if without.overBudget == 0 || without.duplicated == 0 {
		t.Errorf("without sendonce the bug did not show: %+v", without)
	}
	// The promises: at most max_attempts requests and one success per notification; and every
	// notification is carried to its end, recorded in its status.
	for i := range notifications {
		requests, successes := viaSidecar.counts(uid(i))
		status := withSidecar.latest(i).Status
		wantRequests, wantSuccesses, wantPhase := failFirst(i)+1, 1, notifier.PhaseDelivered
		if failFirst(i) >= maxAttempts {
			wantRequests, wantSuccesses, wantPhase = maxAttempts, 0, notifier.PhaseGaveUp
		}
		if requests != wantRequests || successes != wantSuccesses {
			t.Errorf("%s (fails %d times): %d requests, %d successes; want %d, %d",
				uid(i), failFirst(i), requests, successes, wantRequests, wantSuccesses)
		}
		if status.Phase != wantPhase || status.Attempts != requests || !status.Final {
			t.Errorf("%s: status %+v after %d requests; want phase %s", uid(i), status, requests, wantPhase)
		}
	}
}
