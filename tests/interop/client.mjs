// A sendonce client that is not written in Python: @grpc/grpc-js with the contract loaded from
// proto/ at run time by @grpc/proto-loader (no generated code, no reflection).
//
//   node client.mjs [address]          address: host:port or unix:///path; else $SENDONCE_ADDRESS,
//                                      else 127.0.0.1:50051
//
// Against a sidecar whose receivers include `console`, it walks one key through its life:
// Deliver (sent), Deliver again (ALREADY_DELIVERED, nothing sent), AttemptCount (the history),
// Clear, AttemptCount (a tombstone), and two bad requests (INVALID_ARGUMENT naming the field).
// It prints one JSON line, {"ok", "uid", "steps", "mismatches"}, and exits 1 when any answer
// differs from what the contract promises (2 when a call fails in an unexpected way).

import { fileURLToPath } from "node:url";
import path from "node:path";
import process from "node:process";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const here = path.dirname(fileURLToPath(import.meta.url));
const protoRoot = path.resolve(here, "..", "..", "proto");
const address = process.argv[2] || process.env.SENDONCE_ADDRESS || "127.0.0.1:50051";
const uid = `node-interop-${process.pid}-${Date.now()}`;
const CHANNEL = "console";

// google/protobuf/{duration,timestamp}.proto resolve from the copies protobufjs ships, which
// proto-loader adds to includeDirs itself; proto/ is the root of our own imports.
const definition = protoLoader.loadSync("sendonce/v1/delivery.proto", {
  includeDirs: [protoRoot],
  keepCase: true, // field names as in the .proto: attempts_used, not attemptsUsed
  enums: String, // "OUTCOME_DELIVERED", not 1
  longs: String,
  defaults: true, // unset scalars answer their zero value, as in every other language
  oneofs: true,
});
const sendonce = grpc.loadPackageDefinition(definition).sendonce.v1;
const client = new sendonce.DeliveryService(address, grpc.credentials.createInsecure());

function call(method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 10_000);
    client[method](request, { deadline }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

/** The gRPC error of a call that must fail, as {code, details}. */
async function refusal(method, request) {
  try {
    const response = await call(method, request);
    return { code: "OK", details: "", response };
  } catch (error) {
    if (typeof error.code !== "number") throw error;
    return { code: grpc.status[error.code], details: error.details };
  }
}

const mismatches = [];
function expect(step, field, actual, expected) {
  const same = JSON.stringify(actual) === JSON.stringify(expected);
  if (!same) mismatches.push({ step, field, actual, expected });
}

const notification = {
  subject: "Node node-a is NotReady",
  body: "kubelet stopped posting status",
  priority: "PRIORITY_CRITICAL",
  metadata: { cluster: "prod", client: "node" },
  links: [{ title: "Runbook", url: "https://runbooks.example/node-not-ready" }],
};
const deliverRequest = { uid, channel: CHANNEL, notification };

const steps = {};
try {
  const first = await call("Deliver", deliverRequest);
  steps.deliver = first;
  expect("deliver", "outcome", first.outcome, "OUTCOME_DELIVERED");
  expect("deliver", "attempt", first.attempt, 1);
  expect("deliver", "attempts_used", first.attempts_used, 1);
  expect("deliver", "final", first.final, true);
  expect("deliver", "shared", first.shared, false);
  expect("deliver", "receipt.reference", first.receipt?.reference, "stdout");
  expect("deliver", "retry_after", first.retry_after, null);

  const again = await call("Deliver", deliverRequest);
  steps.deliver_again = again;
  expect("deliver_again", "outcome", again.outcome, "OUTCOME_ALREADY_DELIVERED");
  expect("deliver_again", "attempt", again.attempt, 1);
  expect("deliver_again", "attempts_used", again.attempts_used, 1);
  expect("deliver_again", "final", again.final, true);

  const state = await call("AttemptCount", { uid, channel: CHANNEL });
  steps.attempt_count = state;
  expect("attempt_count", "found", state.found, true);
  expect("attempt_count", "succeeded", state.succeeded, true);
  expect("attempt_count", "final", state.final, true);
  expect("attempt_count", "attempts_used", state.attempts_used, 1);
  expect("attempt_count", "remaining", state.remaining, 0); // nothing more is ever sent
  expect(
    "attempt_count",
    "history",
    state.history.map((a) => [a.number, a.result]),
    [[1, "ATTEMPT_RESULT_SUCCEEDED"]],
  );
  // A google.protobuf.Timestamp arrives as {seconds, nanos}: the well-known import resolved.
  const started = Number(state.history[0]?.start_time?.seconds ?? 0) * 1000;
  expect("attempt_count", "history[0].start_time is recent", Date.now() - started < 60_000, true);

  const cleared = await call("Clear", { uid, channels: [], force: false });
  steps.clear = cleared;
  expect("clear", "cleared_channels", cleared.cleared_channels, [CHANNEL]);
  expect("clear", "running_channels", cleared.running_channels, []);

  const tombstone = await call("AttemptCount", { uid, channel: CHANNEL });
  steps.attempt_count_after_clear = tombstone;
  expect("attempt_count_after_clear", "cleared", tombstone.cleared, true);
  expect("attempt_count_after_clear", "succeeded", tombstone.succeeded, true);

  const noUid = await refusal("Deliver", { ...deliverRequest, uid: "" });
  steps.bad_uid = noUid;
  expect("bad_uid", "code", noUid.code, "INVALID_ARGUMENT");
  expect("bad_uid", "details names the field", /^uid: /.test(noUid.details ?? ""), true);

  const tooMany = await refusal("Deliver", {
    ...deliverRequest,
    uid: `${uid}-policy`,
    retry_policy: { max_attempts: 30 },
  });
  steps.bad_retry_policy = tooMany;
  expect("bad_retry_policy", "code", tooMany.code, "INVALID_ARGUMENT");
  expect(
    "bad_retry_policy",
    "details names the field",
    /^retry_policy\.max_attempts: /.test(tooMany.details ?? ""),
    true,
  );
} catch (error) {
  const code = typeof error.code === "number" ? grpc.status[error.code] : "CLIENT_ERROR";
  const details = error.details ?? String(error);
  console.log(JSON.stringify({ ok: false, uid, steps, mismatches, error: { code, details } }));
  client.close();
  process.exit(2);
}

client.close();
console.log(JSON.stringify({ ok: mismatches.length === 0, uid, steps, mismatches }));
process.exit(mismatches.length === 0 ? 0 : 1);
