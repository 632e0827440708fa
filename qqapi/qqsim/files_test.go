package qqsim_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
)

// mediaBody is a msg_type 7 message carrying fileInfo.
func mediaBody(fileInfo string) string {
	return fmt.Sprintf(`{"msg_type":7,"content":" ","media":{"file_info":%q}}`, fileInfo)
}

// uploadInfo uploads a file and returns the answer's file_info and ttl.
func (b *bundle) uploadInfo(scene, target string) (string, int) {
	b.t.Helper()
	a := b.upload(scene, target, `{"file_type":1,"url":"https://img.example/a.png","srv_send_msg":false}`)
	mustOK(b.t, a, "upload")
	fi, _ := a.body["file_info"].(string)
	ttl, _ := a.body["ttl"].(float64)
	if fi == "" {
		b.t.Fatalf("upload answer without file_info: %s", a.raw)
	}
	return fi, int(ttl)
}

// TestFileInfoLifecycle: a msg_type 7 message is accepted only with a
// file_info an upload of its scene issued, within the upload's ttl.
func TestFileInfoLifecycle(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *qqsim.Config) { c.Rules = bareRules(); c.FileTTL = 90 * time.Second })
	groupInfo, ttl := b.uploadInfo(qqsim.SceneGroup, "g1")
	if ttl != 90 {
		t.Fatalf("ttl %d, want 90 (Config.FileTTL)", ttl)
	}
	c2cInfo, _ := b.uploadInfo(qqsim.SceneC2C, "u1")
	if groupInfo == c2cInfo {
		t.Fatalf("two uploads answered the same file_info %q", groupInfo)
	}
	mustOK(t, b.send(qqsim.SceneGroup, "g1", mediaBody(groupInfo)), "group media with its file_info")
	// Reusable within its scene, any number of times, until the ttl.
	b.clock.Add(89 * time.Second)
	mustOK(t, b.send(qqsim.SceneGroup, "g2", mediaBody(groupInfo)), "reused in the scene just before the ttl")
	mustReject(t, b.send(qqsim.SceneC2C, "u1", mediaBody(groupInfo)), 400, qqsim.DefaultMalformedCode, "a group file_info in c2c")
	mustReject(t, b.send(qqsim.SceneGroup, "g1", mediaBody("sim-file-info-group-999999")), 400, qqsim.DefaultMalformedCode, "made-up file_info")
	b.clock.Add(time.Second)
	mustReject(t, b.send(qqsim.SceneGroup, "g1", mediaBody(groupInfo)), 400, qqsim.DefaultMalformedCode, "file_info at its ttl")
	mustReject(t, b.send(qqsim.SceneC2C, "u1", mediaBody(c2cInfo)), 400, qqsim.DefaultMalformedCode, "c2c file_info at its ttl")

	st := b.sim.Stats()
	if st.Uploads != 2 || st.Accepted != 2 {
		t.Fatalf("stats %+v: want 2 uploads and 2 messages accepted", st)
	}
	if n := b.sim.Rejections()[qqsim.RuleFileInfo]; n != 4 {
		t.Fatalf("%d file_info rejections, want 4 (%v)", n, b.sim.Rejections())
	}
	// Reset forgets issued files with everything else.
	fresh, _ := b.uploadInfo(qqsim.SceneGroup, "g1")
	b.sim.Reset()
	mustReject(t, b.send(qqsim.SceneGroup, "g1", mediaBody(fresh)), 400, qqsim.DefaultMalformedCode, "file_info after Reset")
}

// TestFileUploadScriptedFailure: a scripted answer on the files endpoint
// issues nothing and counts no upload.
func TestFileUploadScriptedFailure(t *testing.T) {
	t.Parallel()
	b := setup(t, withRules(bareRules()))
	b.sim.Script(qqsim.Script{Endpoint: qqsim.EndpointFiles, Code: 40034006, Message: "content rejected"})
	a := b.upload(qqsim.SceneGroup, "g", `{"file_type":1,"url":"https://img.example/a.png"}`)
	if a.status != 400 || a.code != 40034006 || a.body["file_info"] != nil {
		t.Fatalf("scripted upload answer %d %d %s", a.status, a.code, a.raw)
	}
	b.uploadInfo(qqsim.SceneGroup, "g")
	if st := b.sim.Stats(); st.Uploads != 1 || st.Faulted != 1 {
		t.Fatalf("stats %+v: want 1 upload and 1 faulted call", st)
	}
}

func TestFileTTLConfig(t *testing.T) {
	t.Parallel()
	for _, ttl := range []time.Duration{-time.Second, 1500 * time.Millisecond} {
		_, err := qqsim.New(qqsim.Config{AppID: appID, AppSecret: appSecret, FileTTL: ttl})
		var ce *qqsim.ConfigError
		if !errors.As(err, &ce) || ce.Field != "FileTTL" || !errors.Is(err, qqsim.ErrInvalidConfig) {
			t.Errorf("FileTTL %s: error %v, want a ConfigError naming FileTTL", ttl, err)
		}
	}
}
