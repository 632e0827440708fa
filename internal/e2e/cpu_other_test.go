//go:build !unix

package e2e

import "time"

// processCPU cannot read the process's CPU time here; it reports 0.
func processCPU() time.Duration { return 0 }
