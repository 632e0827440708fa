package qqsim_test

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
)

// TestConcurrentSendersNeverExceedRate has many goroutines send against one
// rate rule while the clock moves, and checks every window of accepted
// messages afterwards.
func TestConcurrentSendersNeverExceedRate(t *testing.T) {
	t.Parallel()
	const (
		limit   = 10
		window  = time.Second
		workers = 24
		each    = 20
	)
	rules := bareRules()
	rules.Rates = []qqsim.RateRule{{Name: "bot", Scene: qqsim.SceneGroup, Per: qqsim.PerBot, Limit: limit, Window: window}}
	b := setup(t, withRules(rules))
	client := b.srv.Client()
	client.Transport.(*http.Transport).MaxIdleConnsPerHost = workers

	var wg sync.WaitGroup
	errs := make(chan string, workers*each)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				resp, err := b.postCtx(t.Context(), client, sendPath(qqsim.SceneGroup, "g"), activeBody(qqsim.SceneGroup))
				if err != nil {
					errs <- err.Error()
					return
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusTooManyRequests {
					errs <- resp.Status
				}
				b.clock.Add(7 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}

	acc := b.sim.Accepted()
	for i, m := range acc {
		n := 0
		for _, o := range acc {
			if o.At.After(m.At.Add(-window)) && !o.At.After(m.At) {
				n++
			}
		}
		if n > limit {
			t.Fatalf("%d accepted in the window ending at message %d (%v), limit %d", n, i, m.At, limit)
		}
	}
	st := b.sim.Stats()
	if len(acc) < limit || st.Rejected == 0 || st.Accepted+st.Rejected != workers*each {
		t.Fatalf("stats %+v, accepted %d", st, len(acc))
	}
}
