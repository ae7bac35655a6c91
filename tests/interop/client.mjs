// A sendonce client that is not written in Python: @grpc/grpc-js with the contract loaded from
// proto/ at run time by @grpc/proto-loader (no generated code, no reflection).
//
//   node client.mjs [address]          address: host:port or unix:///path; else $SENDONCE_ADDRESS,
//                                      else 127.0.0.1:50051
//
// Against a sidecar whose receivers include `console`, it walks one key through its life:
// Deliver (sent), Deliver again (ALREADY_DELIVERED, nothing sent), AttemptCount (the history),
// Clear, AttemptCount (a tombstone), and four refusals: two bad requests (INVALID_ARGUMENT), an
// unknown receiver (NOT_FOUND) and another payload for the delivered key (FAILED_PRECONDITION).
// Each refusal's Google AIP-193 details are read as any Node.js program can: the
// `grpc-status-details-bin` trailer decoded as a google.rpc.Status, its `Any` details as a
// google.rpc.ErrorInfo and (for INVALID_ARGUMENT) a google.rpc.BadRequest, by protobufjs on
// proto/google/rpc/*.proto here (copied unchanged from googleapis, Apache-2.0, as shipped in
// googleapis-common-protos 1.76.0). It prints one JSON line, {"ok", "uid", "steps", "mismatches"}, and exits 1 when any answer
// differs from what the contract promises (2 when a call fails in an unexpected way).

import { fileURLToPath } from "node:url";
import path from "node:path";
import process from "node:process";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const protoRoot = path.resolve(here, "..", "..", "proto");
const address = process.argv[2] || process.env.SENDONCE_ADDRESS || "127.0.0.1:50051";
const uid = `node-interop-${process.pid}-${Date.now()}`;
const CHANNEL = "console";
const DOMAIN = "sendonce.dev";

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

// google.rpc.Status and the error details, resolved from proto/ here (google/protobuf/*.proto
// come from the copies protobufjs ships).
const googleRpc = new protobuf.Root();
googleRpc.resolvePath = (_origin, target) => path.resolve(here, "proto", target);
googleRpc.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], {
  keepCase: true,
});
const Status = googleRpc.lookupType("google.rpc.Status");

/**
 * The rich details of a refusal, or null when it has none: the google.rpc.Status in the
 * grpc-status-details-bin trailer, with each `Any` detail decoded by its type name (null for a
 * type not in the protos above).
 */
function richStatus(error) {
  const values = error.metadata?.get("grpc-status-details-bin") ?? [];
  if (values.length === 0) return null;
  const status = Status.decode(values[0]);
  const details = {};
  for (const any of status.details) {
    const typeName = any.type_url.slice(any.type_url.lastIndexOf("/") + 1);
    const type = googleRpc.lookup(typeName);
    details[typeName] =
      type instanceof protobuf.Type
        ? type.toObject(type.decode(any.value), { defaults: true, arrays: true, objects: true })
        : null;
  }
  return { code: grpc.status[status.code], message: status.message, details };
}

function call(method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 10_000);
    client[method](request, { deadline }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

/** The gRPC error of a call that must fail, as {code, details, status (its rich details)}. */
async function refusal(method, request) {
  try {
    const response = await call(method, request);
    return { code: "OK", details: "", status: null, response };
  } catch (error) {
    if (typeof error.code !== "number") throw error;
    return { code: grpc.status[error.code], details: error.details, status: richStatus(error) };
  }
}

const mismatches = [];
function expect(step, field, actual, expected) {
  const same = JSON.stringify(actual) === JSON.stringify(expected);
  if (!same) mismatches.push({ step, field, actual, expected });
}

/**
 * Checks a refusal's AIP-193 details: the Status repeats the call's code and message; one
 * ErrorInfo with `reason`, our domain and `metadata`; a BadRequest naming `fields` exactly when
 * some are given (INVALID_ARGUMENT), none otherwise.
 */
function expectDetails(step, refused, { reason, metadata, fields = [] }) {
  const status = refused.status;
  expect(step, "grpc-status-details-bin present", status !== null, true);
  if (status === null) return;
  expect(step, "status.code", status.code, refused.code);
  expect(step, "status.message", status.message, refused.details);
  const info = status.details["google.rpc.ErrorInfo"];
  expect(step, "ErrorInfo.reason", info?.reason, reason);
  expect(step, "ErrorInfo.domain", info?.domain, DOMAIN);
  // A map's order on the wire is unspecified: compare its entries sorted.
  const entries = (map) => Object.entries(map ?? {}).sort();
  expect(step, "ErrorInfo.metadata", entries(info?.metadata), entries(metadata));
  const bad = status.details["google.rpc.BadRequest"];
  expect(
    step,
    "BadRequest.field_violations[].field",
    bad?.field_violations.map((violation) => violation.field) ?? [],
    fields,
  );
  expect(
    step,
    "BadRequest.field_violations[].description set",
    (bad?.field_violations ?? []).every((violation) => violation.description !== ""),
    true,
  );
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

  // Another payload for the delivered key: refused, and nothing is sent.
  const mismatch = await refusal("Deliver", {
    ...deliverRequest,
    notification: { ...notification, subject: "Node node-a is Ready" },
  });
  steps.payload_mismatch = mismatch;
  expect("payload_mismatch", "code", mismatch.code, "FAILED_PRECONDITION");
  expectDetails("payload_mismatch", mismatch, {
    reason: "PAYLOAD_MISMATCH",
    metadata: { uid, channel: CHANNEL },
  });

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
  expectDetails("bad_uid", noUid, {
    reason: "INVALID_ARGUMENT",
    metadata: { field: "uid" },
    fields: ["uid"],
  });

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
  expectDetails("bad_retry_policy", tooMany, {
    reason: "INVALID_ARGUMENT",
    metadata: { field: "retry_policy.max_attempts" },
    fields: ["retry_policy.max_attempts"],
  });

  const unknown = await refusal("Deliver", { ...deliverRequest, channel: "no-such-receiver" });
  steps.unknown_channel = unknown;
  expect("unknown_channel", "code", unknown.code, "NOT_FOUND");
  expectDetails("unknown_channel", unknown, {
    reason: "UNKNOWN_CHANNEL",
    metadata: { channel: "no-such-receiver" },
  });
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
