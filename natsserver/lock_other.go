//go:build !(darwin || dragonfly || freebsd || illumos || linux || netbsd || openbsd || windows)

package natsserver

import (
	"errors"
	"io/fs"
	"os"
)

// staleLockPossible: a process that dies holding the lock leaves it.
const staleLockPossible = true

// lockFile is the portable fallback where neither flock(2) nor Windows
// share modes are available: the lock is the file's existence, created
// exclusively and removed by Close. Unlike the OS locks, it outlives a
// process that dies holding it; StoreInUseError then says to remove it.
func lockFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o640)
	if errors.Is(err, fs.ErrExist) {
		return nil, errLocked
	}
	if err != nil {
		return nil, err
	}
	return f, nil
}
