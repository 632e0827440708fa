//go:build darwin || dragonfly || freebsd || illumos || linux || netbsd || openbsd

package natsserver

import (
	"errors"
	"os"
	"syscall"
)

// staleLockPossible: a lock cannot outlive its process.
const staleLockPossible = false

// lockFile opens path and takes an exclusive flock(2) on it without
// waiting. The kernel drops the lock when the file is closed or the process
// ends, however it ends, so a crash never leaves a stale lock. Locks are per
// open file, so a second Server in the same process is refused as well.
// Closing the file releases the lock.
func lockFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, err
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, errLocked
		}
		return nil, &os.PathError{Op: "flock", Path: path, Err: err}
	}
	return f, nil
}
