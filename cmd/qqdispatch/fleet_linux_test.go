package main

import (
	"os/exec"
	"syscall"
)

// dieWithTest makes the kernel kill a worker process when the test process
// dies without its cleanups (a -timeout panic, a kill): orphaned workers
// would otherwise retry their NATS connection forever.
func dieWithTest(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
