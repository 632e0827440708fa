// Package ratelimit enforces the QQ platform's rules before a call, so that a
// bot never trips a limit, never wastes a reply or a quota on a send that
// cannot succeed, and still uses the capacity the platform allows.
//
// The rules come from a Policy (one YAML document, docs/policy.md; the
// shipped defaults follow qq-platform.md). A Limiter implements
// dispatcher.Limiter on top of it:
//
//   - Deadline and ReplyBudget: the passive reply window and the replies
//     allowed per msg_id;
//   - Reserve: active-send permission, then the period quotas (day/month in
//     the policy's zone), counted with compare-and-set in a QuotaStore
//     shared by every worker (queue.QuotaStore, a JetStream KV bucket);
//   - Wait: token buckets per target (golang.org/x/time/rate), per bot and
//     per endpoint (calendars of slots for burst-1 shared buckets, GCRA
//     otherwise, in process or fleet-wide in a SlotStore), plus
//     cool-downs after rate-limit answers; every bucket also checks when
//     calls really left, so a goroutine that wakes late cannot bring two
//     calls closer than the rate allows; idle per-target buckets are
//     evicted, so memory follows the active targets only;
//   - Feedback: rate-limit answers pause the key, quota answers mark the
//     period as spent.
//
// The package talks to no server: the state the fleet shares goes through
// QuotaStore and SlotStore, which package queue implements over JetStream.
package ratelimit
