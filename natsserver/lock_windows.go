//go:build windows

package natsserver

import (
	"errors"
	"os"
	"syscall"
)

// staleLockPossible: a lock cannot outlive its process.
const staleLockPossible = false

// errorSharingViolation is ERROR_SHARING_VIOLATION: another handle has the
// file open without sharing it for writing.
const errorSharingViolation syscall.Errno = 32

// lockFile opens path for writing without sharing write access: while it
// is open, nobody else can open it for writing. Windows closes the handle
// when the process ends, however it ends, so a crash never leaves a stale
// lock. Closing the file releases the lock.
func lockFile(path string) (*os.File, error) {
	p, err := syscall.UTF16PtrFromString(path)
	if err != nil {
		return nil, err
	}
	h, err := syscall.CreateFile(p, syscall.GENERIC_READ|syscall.GENERIC_WRITE, syscall.FILE_SHARE_READ, nil,
		syscall.OPEN_ALWAYS, syscall.FILE_ATTRIBUTE_NORMAL, 0)
	if errors.Is(err, errorSharingViolation) {
		return nil, errLocked
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(h), path), nil
}
