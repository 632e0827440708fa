package dispatcher_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/queue"
)

// FuzzDecode: Decode never panics; it either refuses with an *InvalidJobError
// that has a reason, or returns a job that re-validates, whose message is the
// producer's bytes and a JSON object, and that survives an encode/decode
// round trip unchanged in kind and anchor.
func FuzzDecode(f *testing.F) {
	for _, c := range validCases {
		if c.opts == (dispatcher.DecodeOptions{}) {
			f.Add(c.subject, []byte(c.body()))
		}
	}
	for _, c := range invalidCases {
		if c.opts == (dispatcher.DecodeOptions{}) && len(c.body) < 1024 {
			f.Add(c.subject, []byte(c.body))
		}
	}
	f.Add("qqbot.send.c2c@1024.U1", []byte(`{"v":1,"bot":"1024","scene":"c2c","target":"U1","message":{"msg_type":0,"content":"x"}}`))
	f.Add("qqbot.send.c2c@1024.U1", []byte(`{"v":1,"bot":"2048","scene":"c2c","target":"U1","message":{"msg_type":0,"content":"x"}}`))
	f.Add("qqbot.send.c2c.U1", []byte(`{"v":1,"bot":"","scene":"c2c","target":"U1","message":{"msg_type":0,"content":"x"}}`))
	f.Add("qqbot.send.c2c@@.U1", []byte(`{"v":1,"bot":"@","scene":"c2c","target":"U1","message":{"msg_type":0,"content":"x"}}`))
	opts := dispatcher.DecodeOptions{}
	f.Fuzz(func(t *testing.T, subject string, data []byte) {
		j, err := dispatcher.Decode(subject, data, opts)
		if err != nil {
			var ie *dispatcher.InvalidJobError
			if !errors.As(err, &ie) || !errors.Is(err, dispatcher.ErrInvalidJob) || ie.Reason == "" {
				t.Fatalf("Decode error %#v is not an *InvalidJobError with a reason", err)
			}
			if j != nil {
				t.Fatal("Decode returned a job with its error")
			}
			return
		}
		if err := j.Validate(opts); err != nil {
			t.Fatalf("Decode accepted a job Validate refuses: %v\n%q", err, data)
		}
		subj, err := dispatcher.ParseJobSubject("", subject)
		if err != nil || subj.Bot != j.Bot || subj.Scene != j.Scene || subj.Target != j.Target || subj.String("") != subject {
			t.Fatalf("job of bot %q, %s, %q from subject %q parsed as %+v, %v", j.Bot, j.Scene, j.Target, subject, subj, err)
		}
		if j.Bot != "" && dispatcher.CheckBot("bot", j.Bot) != nil {
			t.Fatalf("accepted bot %q breaks the rules", j.Bot)
		}
		var msg map[string]json.RawMessage
		if err := json.Unmarshal(j.Message, &msg); err != nil {
			t.Fatalf("message is not a JSON object: %v: %q", err, j.Message)
		}
		if !bytes.Contains(data, j.Message) {
			t.Fatalf("message %q is not the producer's bytes", j.Message)
		}
		if (j.Received != nil) != (j.Kind() == dispatcher.KindPassive) {
			t.Fatalf("received_at %v on a %s job", j.Received, j.Kind())
		}
		again, err := json.Marshal(j)
		if err != nil {
			t.Fatalf("Marshal: %v", err)
		}
		back, err := dispatcher.Decode(subject, again, dispatcher.DecodeOptions{MaxBodyBytes: 2 * dispatcher.DefaultMaxJobBytes})
		if err != nil {
			t.Fatalf("Decode(Marshal(job)) failed: %v\n%s", err, again)
		}
		if back.Kind() != j.Kind() || back.Anchor() != j.Anchor() || back.MsgSeq != j.MsgSeq || back.Wakeup != j.Wakeup {
			t.Fatalf("round trip changed the job: %+v -> %+v", j, back)
		}
	})
}

// FuzzIdentity runs whole NATS messages (subject, headers, body, stream
// sequence) through the pipeline's decode and identity path
// (Processor.Handle, with stores in memory): it never panics; every
// message is acked once and ends with one outcome, under an id that
// passes CheckID and makes a short KV key; every key the ledger is asked
// about is short; a call is made only for a job that decoded with a
// usable id; and the outcome is invalid exactly when it did not.
//
// headers is a header block, one "Name: value" per line.
func FuzzIdentity(f *testing.F) {
	long := strings.Repeat("x", 4096)
	for i, c := range validCases {
		if c.opts == (dispatcher.DecodeOptions{}) {
			f.Add(c.subject, "Nats-Msg-Id: m"+strconv.Itoa(i), []byte(c.body()), uint64(i))
		}
	}
	for i, c := range invalidCases {
		if c.opts == (dispatcher.DecodeOptions{}) && len(c.body) < 1024 {
			f.Add(c.subject, "Qqdispatch-Job-Id: j"+strconv.Itoa(i), []byte(c.body), uint64(i))
		}
	}
	body := `{"v":1,"scene":"group","target":"g1","message":{"msg_type":0,"content":"x"}}`
	for _, h := range []string{
		"Nats-Msg-Id: " + long,
		"Qqdispatch-Job-Id: " + long + "\nNats-Msg-Id: ok",
		"Nats-Msg-Id: a\x01b",
		"Nats-Msg-Id: \xff",
		"Nats-Msg-Id: seq-5",
		"Qqdispatch-Code: 11255\nQqdispatch-Trace-Id: forged\nQqdispatch-Status: sent",
		"",
	} {
		f.Add("qqbot.send.group.g1", h, []byte(body), uint64(5))
	}
	f.Add("qqbot.send.group."+long, "", []byte(`{"v":1,"scene":"group","target":"`+long+`","message":{}}`), uint64(1))
	f.Add("qqbot.send.group.g1", "", []byte(`{"v":1,"id":"`+long+`"}`), uint64(1))
	f.Add("qqbot.send.group@1024.g1", "Nats-Msg-Id: m1", []byte(`{"v":1,"bot":"1024","scene":"group","target":"g1","message":{"msg_type":0,"content":"x"}}`), uint64(2))
	f.Add("qqbot.send.group@1024.g1", "", []byte(`{"v":1,"scene":"group","target":"g1","message":{"msg_type":0,"content":"x"}}`), uint64(2))
	f.Add("qqbot.send.group.g1", "", []byte(`{"id":"`+strings.Repeat("群", 100)+`","v":1}`), uint64(1))

	f.Fuzz(func(t *testing.T, subject, headers string, data []byte, seq uint64) {
		hdr := map[string][]string{}
		for _, line := range strings.Split(headers, "\n") {
			if k, v, ok := strings.Cut(line, ": "); ok {
				hdr[k] = append(hdr[k], v)
			}
		}
		env := dispatcher.Envelope{Subject: subject, Header: hdr, Data: data, Seq: seq}
		job, derr := dispatcher.Decode(subject, data, dispatcher.DecodeOptions{})
		id := dispatcher.IdentifyJob(job, env)
		if again := dispatcher.IdentifyJob(job, env); again.ID != id.ID || again.Source != id.Source || (again.Err == nil) != (id.Err == nil) {
			t.Fatalf("IdentifyJob is not deterministic: %+v, then %+v", id, again)
		}
		if err := dispatcher.CheckID("id", id.ID); err != nil {
			t.Fatalf("IdentifyJob gave an id that breaks the rules: %v", err)
		}
		if id.Err != nil && (id.Err.Field == "" || !strings.HasPrefix(id.ID, "invalid-id-") ||
			id.Err.Field != "id" && id.ID != dispatcher.InvalidIDKey(idHeader(env, id.Err.Field))) {
			t.Fatalf("id error %v, id %q: want the field named and the id InvalidIDKey of it", id.Err, id.ID)
		}

		r := newRig(t)
		d := &memDelivery{env: env}
		out, err := r.p.Handle(context.Background(), d)
		if err != nil {
			t.Fatalf("Handle: %v", err)
		}
		if d.acks != 1 || d.releases != 0 {
			t.Fatalf("%d acks, %d releases; want the message acked once", d.acks, d.releases)
		}
		if len(r.rec.outs) != 1 {
			t.Fatalf("%d outcomes stored, want 1", len(r.rec.outs))
		}
		if _, ok := r.rec.outs[out.JobID]; !ok {
			t.Fatalf("outcome of %q is not stored under its id", out.JobID)
		}
		if err := dispatcher.CheckID("id", out.JobID); err != nil {
			t.Fatalf("outcome id: %v", err)
		}
		for _, k := range append(r.ledger.keys, out.JobID) {
			if key := queue.EncodeKey(k); len(key) > 600 || strings.HasPrefix(key, "==") {
				t.Fatalf("the key of %.40q is %d bytes: producer text must never make a long key", k, len(key))
			}
		}
		usable := derr == nil && id.Err == nil
		if r.send.mediaURL > 0 {
			t.Fatalf("a message went out with media by URL instead of a file_info")
		}
		if usable && job.Media != nil && out.Status == dispatcher.StatusSent && r.send.uploads != 1 {
			t.Fatalf("a job with media by URL was sent after %d uploads, want 1", r.send.uploads)
		}
		if calls := r.send.total(); calls > 0 && !usable {
			t.Fatalf("%d calls for a job that is invalid (%v, %v)", calls, derr, id.Err)
		}
		if (out.Status == dispatcher.StatusInvalid) == usable {
			t.Fatalf("outcome %s for a job whose decode error is %v and id error %v", out.Status, derr, id.Err)
		}
		if usable && out.Status != dispatcher.StatusSent && out.Status != dispatcher.StatusExpired {
			t.Fatalf("a usable job ended %s: %s", out.Status, out.Reason)
		}
		if subj := queue.DLQSubject(queue.Config{}, string(out.Scene), out.Target); len(subj) > 200 {
			t.Fatalf("DLQ subject of %d bytes", len(subj))
		}
	})
}

// idHeader is the id the message carries in the header field names.
func idHeader(env dispatcher.Envelope, field string) string {
	if field == string(dispatcher.IDFromJobIDHdr) {
		return env.Header[dispatcher.HeaderJobID][0]
	}
	return env.Header[dispatcher.HeaderMsgID][0]
}
