#!/usr/bin/env python3
"""A qqdispatch producer in Python (nats-py).

Publishes the jobs of ../jobs/jobs.json through JetStream, waits for their outcomes in the outcomes KV bucket and
prints them, one JSON line per job.

    pip install -r requirements.txt
    MSG_ID=... GROUP_OPENID=... python3 producer.py

With `qqdispatch serve` on its simulator, SIM_URL (the simulator's URL, which serve logs) stands in for MSG_ID: the
simulator hands out an inbound message to reply to. `python3 producer.py --print` prints what would be published
(subject, headers, body) without connecting, and needs no nats-py. Environment (all optional but the message id):

    NATS_URL            servers, comma-separated (nats://127.0.0.1:4222)
    NATS_USER, NATS_PASSWORD   e.g. the `producer` user of deploy/nats
    GROUP_OPENID        the group both jobs go to (GROUP_1)
    MSG_ID              the inbound message the reply answers; or SIM_URL
    IMAGE_URL           the image the second job sends (an http(s) URL QQ can fetch)
    WAIT_SECONDS        how long to wait for the outcomes (60)
    JOBS_FILE           the jobs (../jobs/jobs.json)

Exit status: 0 when every job was delivered (sent or pending_audit), 1 otherwise.
"""

import asyncio
import base64
import hashlib
import json
import os
import re
import secrets
import sys
import urllib.request
from datetime import datetime, timezone

# The subject prefix and the names it gives the jobs stream and the outcomes bucket: qqdispatch's defaults. A
# deployment with another --prefix has other names (docs/cli.md, "One NATS, several deployments").
PREFIX = "qqbot"
JOBS_STREAM = "QQDISPATCH_JOBS"
OUTCOMES_BUCKET = "qqdispatch_outcomes"
DELIVERED = {"sent", "pending_audit"}

HERE = os.path.dirname(os.path.abspath(__file__))
PLACEHOLDER = re.compile(r"\$\{([A-Z_]+)\}")
VERBATIM_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def env(name, fallback=None):
    v = os.environ.get(name, "")
    return fallback if v == "" else v


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def dedupe_id(job_id, body):
    """The Nats-Msg-Id for a job: its id, "~" and 16 hex digits of the body's SHA-256 (the job contract's conflict
    id). The stream then drops only a repeat of this very job, never another job that reuses the id. It is also the
    key the job's outcome goes under when another job took the id first."""
    tag = sha256_hex(body)[:16]
    if len(job_id.encode()) + 1 + 16 > 256:
        job_id = sha256_hex(job_id.encode())[:32]
    return f"{job_id}~{tag}"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def outcome_key(job_id):
    """The outcomes bucket's key for a job id: the id itself when it is made of [A-Za-z0-9_-], else "=" and its
    base64url (queue/keys.go)."""
    raw = job_id.encode()
    if VERBATIM_KEY.match(job_id) and len(raw) <= 1024:
        return job_id
    enc = b64url(raw)
    if 1 + len(enc) > 1024:
        return "==" + b64url(hashlib.sha256(raw).digest())
    return "=" + enc


def fill(v, variables):
    """Replaces ${NAME} in every string value of v."""
    if isinstance(v, str):
        def sub(m):
            if m.group(1) not in variables:
                raise ValueError(f"jobs file: unknown placeholder {m.group(0)}")
            return variables[m.group(1)]
        return PLACEHOLDER.sub(sub, v)
    if isinstance(v, list):
        return [fill(x, variables) for x in v]
    if isinstance(v, dict):
        return {k: fill(x, variables) for k, x in v.items()}
    return v


def inbound_from_simulator(sim_url, group):
    """Asks the QQ simulator for an inbound message to reply to."""
    req = urllib.request.Request(
        sim_url.rstrip("/") + "/_sim/inbound",
        data=json.dumps({"scene": "group", "target": group}).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)["msg_id"]


def prepare():
    """Reads the jobs file and builds what each job publishes: subject, Nats-Msg-Id and body bytes."""
    path = env("JOBS_FILE", os.path.join(HERE, "..", "jobs", "jobs.json"))
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    group = env("GROUP_OPENID", "GROUP_1")
    msg_id = env("MSG_ID", "")
    if msg_id == "":
        sim_url = env("SIM_URL", "")
        if sim_url == "":
            raise ValueError("set MSG_ID (the inbound message the reply answers) or SIM_URL (the QQ simulator's URL)")
        msg_id = inbound_from_simulator(sim_url, group)
    variables = {
        "RUN": secrets.token_hex(6),
        "PRODUCER": "python",
        "NOW": datetime.now(timezone.utc).isoformat(),
        "GROUP": group,
        "MSG_ID": msg_id,
        "IMAGE_URL": env("IMAGE_URL", "https://example.com/qqdispatch/hello.png"),
    }
    jobs = []
    for item in spec["jobs"]:
        job = fill(item["job"], variables)
        body = json.dumps(job, ensure_ascii=False, separators=(",", ":")).encode()
        jobs.append({
            "name": item["name"],
            "job": job,
            "subject": f"{PREFIX}.send.{job['scene']}.{job['target']}",
            "body": body,
            "msg_id": dedupe_id(job["id"], body),
        })
    return jobs


async def publish_and_wait(jobs):
    import nats  # here, so that --print works without nats-py

    servers = env("NATS_URL", "nats://127.0.0.1:4222").split(",")
    opts = {"servers": servers, "name": "qqdispatch python example"}
    if env("NATS_USER"):
        opts["user"], opts["password"] = env("NATS_USER"), env("NATS_PASSWORD", "")
    nc = await nats.connect(**opts)
    try:
        js = nc.jetstream()
        kv = await js.key_value(OUTCOMES_BUCKET)
        got = {}
        all_in = asyncio.get_running_loop().create_future()

        def accept(p, key, data):
            if p["name"] in got or not data:
                return
            o = json.loads(data)
            # An outcome under the id that names another scene or target belongs to another job that took the id
            # first: this job's comes under its conflict id (the Nats-Msg-Id).
            if key == p["own_key"] and (o.get("scene") != p["job"]["scene"] or o.get("target") != p["job"]["target"]):
                return
            got[p["name"]] = o
            if len(got) == len(jobs) and not all_in.done():
                all_in.set_result(True)

        # Listen on the bucket's subjects before anything is published (the outcome is written there); the keys
        # are also read now and then, in case a message was missed while reconnecting.
        subs = []
        for p in jobs:
            p["own_key"], p["conflict_key"] = outcome_key(p["job"]["id"]), outcome_key(p["msg_id"])
            for key in (p["own_key"], p["conflict_key"]):
                async def cb(msg, p=p, key=key):
                    accept(p, key, msg.data)
                subs.append(await nc.subscribe(f"$KV.{OUTCOMES_BUCKET}.{key}", cb=cb))
        await nc.flush()

        async def poll():
            for p in jobs:
                for key in (p["own_key"], p["conflict_key"]):
                    if p["name"] in got:
                        break
                    try:
                        e = await kv.get(key)
                    except Exception:  # not there yet (KeyNotFoundError), or the read failed: the next poll retries
                        continue
                    if e.operation is None:  # a value, not a delete marker
                        accept(p, key, e.value)

        for p in jobs:
            # A JetStream publish: the stream acknowledges it (or says why not), unlike a core publish.
            ack = await js.publish(p["subject"], p["body"], stream=JOBS_STREAM, headers={"Nats-Msg-Id": p["msg_id"]})
            dup = " (a duplicate: the stream had it already)" if ack.duplicate else ""
            print(f"published {p['name']} as {p['job']['id']}: stream {ack.stream} seq {ack.seq}{dup}", file=sys.stderr)

        await poll()  # an id used before may have its outcome already
        deadline = asyncio.get_running_loop().time() + float(env("WAIT_SECONDS", "60"))
        while not all_in.done():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(asyncio.shield(all_in), min(2.0, left))
            except asyncio.TimeoutError:
                await poll()
        for s in subs:
            await s.unsubscribe()
        return got
    finally:
        await nc.close()


def main():
    try:
        jobs = prepare()
    except (OSError, ValueError, KeyError) as e:
        print(f"python example: {e}", file=sys.stderr)
        return 1
    if "--print" in sys.argv[1:]:
        for p in jobs:
            print(json.dumps({"name": p["name"], "subject": p["subject"], "headers": {"Nats-Msg-Id": p["msg_id"]},
                              "body": p["body"].decode()}, ensure_ascii=False))
        return 0
    try:
        got = asyncio.run(publish_and_wait(jobs))
    except Exception as e:  # a connection or publish error: one line, as the other examples
        print(f"python example: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    ok = True
    for p in jobs:
        o = got.get(p["name"])
        if o is None:
            print(f"{p['name']}: no outcome for {p['job']['id']} yet (qqdispatch outcome {p['job']['id']} shows where "
                  "it waits)", file=sys.stderr)
            ok = False
            continue
        print(json.dumps({"name": p["name"], "outcome": o}, ensure_ascii=False))
        ok = ok and o.get("status") in DELIVERED
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
