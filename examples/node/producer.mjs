// A qqdispatch producer in Node (nats.js): publishes the jobs of ../jobs/jobs.json through JetStream, waits for
// their outcomes in the outcomes KV bucket and prints them, one JSON line per job.
//
//   npm ci
//   MSG_ID=... GROUP_OPENID=... node producer.mjs
//
// With `qqdispatch serve` on its simulator, SIM_URL (the simulator's URL, which serve logs) stands in for MSG_ID:
// the simulator hands out an inbound message to reply to. `node producer.mjs --print` prints what would be
// published (subject, headers, body) without connecting. Environment (all optional but the message id):
//
//   NATS_URL            servers, comma-separated (nats://127.0.0.1:4222)
//   NATS_USER, NATS_PASSWORD   e.g. the `producer` user of deploy/nats
//   GROUP_OPENID        the group both jobs go to (GROUP_1)
//   MSG_ID              the inbound message the reply answers; or SIM_URL
//   IMAGE_URL           the image the second job sends (an http(s) URL QQ can fetch)
//   WAIT_SECONDS        how long to wait for the outcomes (60)
//   JOBS_FILE           the jobs (../jobs/jobs.json)
//
// Exit status: 0 when every job was delivered (sent or pending_audit), 1 otherwise.

import { createHash, randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";

// The subject prefix and the names it gives the jobs stream and the outcomes bucket: qqdispatch's defaults. A
// deployment with another --prefix has other names (docs/cli.md, "One NATS, several deployments").
const PREFIX = "qqbot";
const JOBS_STREAM = "QQDISPATCH_JOBS";
const OUTCOMES_BUCKET = "qqdispatch_outcomes";
const DELIVERED = new Set(["sent", "pending_audit"]);

const here = path.dirname(fileURLToPath(import.meta.url));

function env(name, fallback) {
  const v = process.env[name];
  return v === undefined || v === "" ? fallback : v;
}

function sha256Hex(data) {
  return createHash("sha256").update(data).digest("hex");
}

// dedupeId is the Nats-Msg-Id for a job: its id, "~" and 16 hex digits of the body's SHA-256 (the job contract's
// conflict id). The stream then drops only a repeat of this very job, never another job that reuses the id. It is
// also the key the job's outcome goes under when another job took the id first.
function dedupeId(id, body) {
  const tag = sha256Hex(body).slice(0, 16);
  if (Buffer.byteLength(id) + 1 + 16 > 256) {
    id = sha256Hex(id).slice(0, 32);
  }
  return `${id}~${tag}`;
}

// outcomeKey is the outcomes bucket's key for a job id: the id itself when it is made of [A-Za-z0-9_-], else "="
// and its base64url (queue/keys.go).
function outcomeKey(id) {
  const bytes = Buffer.from(id, "utf8");
  if (/^[A-Za-z0-9_-]+$/.test(id) && bytes.length <= 1024) {
    return id;
  }
  const b64 = bytes.toString("base64url");
  if (1 + b64.length > 1024) {
    return "==" + createHash("sha256").update(bytes).digest("base64url");
  }
  return "=" + b64;
}

// fill replaces ${NAME} in every string value of v.
function fill(v, vars) {
  if (typeof v === "string") {
    return v.replace(/\$\{([A-Z_]+)\}/g, (whole, name) => {
      if (!(name in vars)) {
        throw new Error(`jobs file: unknown placeholder ${whole}`);
      }
      return vars[name];
    });
  }
  if (Array.isArray(v)) {
    return v.map((x) => fill(x, vars));
  }
  if (v !== null && typeof v === "object") {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, fill(x, vars)]));
  }
  return v;
}

// inboundFromSimulator asks the QQ simulator for an inbound message to reply to.
async function inboundFromSimulator(simURL, group) {
  const res = await fetch(new URL("/_sim/inbound", simURL), {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ scene: "group", target: group }),
  });
  if (!res.ok) {
    throw new Error(`simulator ${simURL}: POST /_sim/inbound answered ${res.status}`);
  }
  return (await res.json()).msg_id;
}

// prepare reads the jobs file and builds what each job publishes: subject, Nats-Msg-Id and body bytes.
async function prepare() {
  const file = env("JOBS_FILE", path.join(here, "..", "jobs", "jobs.json"));
  const spec = JSON.parse(await readFile(file, "utf8"));
  const group = env("GROUP_OPENID", "GROUP_1");
  let msgID = env("MSG_ID", "");
  if (msgID === "") {
    const simURL = env("SIM_URL", "");
    if (simURL === "") {
      throw new Error("set MSG_ID (the inbound message the reply answers) or SIM_URL (the QQ simulator's URL)");
    }
    msgID = await inboundFromSimulator(simURL, group);
  }
  const vars = {
    RUN: randomBytes(6).toString("hex"),
    PRODUCER: "node",
    NOW: new Date().toISOString(),
    GROUP: group,
    MSG_ID: msgID,
    IMAGE_URL: env("IMAGE_URL", "https://example.com/qqdispatch/hello.png"),
  };
  return spec.jobs.map(({ name, job }) => {
    const filled = fill(job, vars);
    const body = Buffer.from(JSON.stringify(filled), "utf8");
    return {
      name,
      job: filled,
      subject: `${PREFIX}.send.${filled.scene}.${filled.target}`,
      body,
      msgID: dedupeId(filled.id, body),
    };
  });
}

// outcomesWatch gathers each job's outcome, by name. It listens on the bucket's subjects before anything is
// published (the outcome is written there), and reads the keys now and then in case a message was missed while
// reconnecting. An outcome under the job's id that names another scene or target belongs to another job that took
// the id first: this job's comes under its conflict id (the Nats-Msg-Id).
async function outcomesWatch(nc, kv, jobs) {
  const got = new Map();
  let done;
  const allIn = new Promise((resolve) => (done = resolve));
  const accept = (p, key, data) => {
    if (got.has(p.name) || data === undefined || data.length === 0) {
      return;
    }
    const o = JSON.parse(Buffer.from(data).toString("utf8"));
    if (key === p.ownKey && (o.scene !== p.job.scene || o.target !== p.job.target)) {
      return;
    }
    got.set(p.name, o);
    if (got.size === jobs.length) {
      done(got);
    }
  };
  const subs = [];
  for (const p of jobs) {
    p.ownKey = outcomeKey(p.job.id);
    p.conflictKey = outcomeKey(p.msgID);
    for (const key of [p.ownKey, p.conflictKey]) {
      subs.push(nc.subscribe(`$KV.${OUTCOMES_BUCKET}.${key}`, { callback: (err, m) => !err && accept(p, key, m.data) }));
    }
  }
  const poll = async () => {
    for (const p of jobs) {
      for (const key of [p.ownKey, p.conflictKey]) {
        if (got.has(p.name)) {
          break;
        }
        const e = await kv.get(key).catch(() => null);
        if (e !== null && e.operation === "PUT") {
          accept(p, key, e.value);
        }
      }
    }
  };
  await nc.flush(); // the subscriptions are in place before the jobs go out
  return {
    poll,
    wait: async (ms) => {
      const timer = setInterval(() => poll().catch(() => {}), 2000);
      let timeout;
      const expired = new Promise((resolve) => (timeout = setTimeout(() => resolve(got), ms)));
      try {
        return await Promise.race([allIn, expired]);
      } finally {
        clearInterval(timer);
        clearTimeout(timeout);
        subs.forEach((s) => s.unsubscribe());
      }
    },
  };
}

async function main() {
  const jobs = await prepare();
  if (process.argv.includes("--print")) {
    for (const p of jobs) {
      console.log(JSON.stringify({ name: p.name, subject: p.subject, headers: { "Nats-Msg-Id": p.msgID }, body: p.body.toString("utf8") }));
    }
    return 0;
  }

  // Loaded here so that --print works before `npm ci`.
  const { connect } = await import("nats");
  const nc = await connect({
    servers: env("NATS_URL", "nats://127.0.0.1:4222").split(","),
    user: env("NATS_USER", undefined),
    pass: env("NATS_PASSWORD", undefined),
    name: "qqdispatch node example",
  });
  try {
    // checkAPI: false skips the account-info request, which the producer user may not make.
    const js = nc.jetstream({ checkAPI: false });
    const kv = await js.views.kv(OUTCOMES_BUCKET, { bindOnly: true, allow_direct: true });
    const watch = await outcomesWatch(nc, kv, jobs);
    for (const p of jobs) {
      // A JetStream publish: the stream acknowledges it (or says why not), unlike a core publish.
      const ack = await js.publish(p.subject, p.body, { msgID: p.msgID, expect: { streamName: JOBS_STREAM } });
      const dup = ack.duplicate ? " (a duplicate: the stream had it already)" : "";
      console.error(`published ${p.name} as ${p.job.id}: stream ${ack.stream} seq ${ack.seq}${dup}`);
    }
    await watch.poll(); // an id used before may have its outcome already
    const got = await watch.wait(Number(env("WAIT_SECONDS", "60")) * 1000);
    let ok = true;
    for (const p of jobs) {
      const o = got.get(p.name);
      if (o === undefined) {
        console.error(`${p.name}: no outcome for ${p.job.id} yet (qqdispatch outcome ${p.job.id} shows where it waits)`);
        ok = false;
        continue;
      }
      console.log(JSON.stringify({ name: p.name, outcome: o }));
      ok = ok && DELIVERED.has(o.status);
    }
    return ok ? 0 : 1;
  } finally {
    await nc.close();
  }
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(`node example: ${err.message}`);
    process.exit(1);
  },
);
