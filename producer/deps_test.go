package producer_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportsOnlyNATSClient: the package (without its tests) imports only
// the standard library and nats.go, and links neither the NATS server nor
// any package of the worker.
func TestImportsOnlyNATSClient(t *testing.T) {
	t.Parallel()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go tool is not on PATH")
	}
	const self = "github.com/qqdispatch/qqdispatch/producer"
	list := func(args ...string) []string {
		t.Helper()
		out, err := exec.Command(goTool, append([]string{"list"}, args...)...).Output()
		if err != nil {
			var stderr string
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = string(ee.Stderr)
			}
			t.Fatalf("go list %v: %v\n%s", args, err, stderr)
		}
		return strings.Fields(string(out))
	}

	allowed := map[string]bool{"github.com/nats-io/nats.go": true, "github.com/nats-io/nats.go/jetstream": true}
	for _, imp := range list("-f", `{{join .Imports " "}}`, self) {
		std := !strings.Contains(strings.SplitN(imp, "/", 2)[0], ".")
		if !std && !allowed[imp] {
			t.Errorf("imports %s: only the standard library, nats.go and nats.go/jetstream are allowed", imp)
		}
	}
	deps := list("-deps", self)
	if len(deps) < 10 {
		t.Fatalf("go list -deps listed only %v", deps)
	}
	for _, dep := range deps {
		switch {
		case strings.HasPrefix(dep, "github.com/nats-io/nats-server"):
			t.Errorf("links the NATS server: %s", dep)
		case strings.HasPrefix(dep, "github.com/qqdispatch/qqdispatch") && dep != self:
			t.Errorf("links a package of the worker: %s", dep)
		}
	}
}
