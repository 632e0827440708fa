package producer

import "testing"

// An outcome under a job's conflict id is its own only when it is for the
// job's bot, scene and target: another producer may publish a job whose
// id has the conflict id's form, and its outcome must not pass for this
// job's.
func TestOwnsChecksTheConflictIDToo(t *testing.T) {
	t.Parallel()
	res := PublishResult{JobID: "order-10", ConflictID: "order-10~d579aaaaaaaaaaaa", Bot: "1001", Scene: Group, Target: "G10"}
	for _, tc := range []struct {
		name string
		o    Outcome
		want bool
	}{
		{"its own under the id", Outcome{JobID: "order-10", Bot: "1001", Scene: Group, Target: "G10"}, true},
		{"its own under the conflict id", Outcome{JobID: res.ConflictID, Bot: "1001", Scene: Group, Target: "G10"}, true},
		{"another bot's under the conflict id", Outcome{JobID: res.ConflictID, Bot: "1002", Scene: Group, Target: "B9"}, false},
		{"another's under the id", Outcome{JobID: "order-10", Bot: "1002", Scene: Group, Target: "B9"}, false},
		{"an invalid job's", Outcome{JobID: res.ConflictID}, true},
		{"another id", Outcome{JobID: "order-11", Bot: "1001", Scene: Group, Target: "G10"}, false},
	} {
		if got := res.owns(tc.o); got != tc.want {
			t.Errorf("%s: owns = %v, want %v", tc.name, got, tc.want)
		}
	}
}
