package registry

import (
	"context"
	"errors"
)

// Store keeps the registry's entries: one value (an encoded Bot) per app id,
// each with a revision that changes on every write. Package queue's BotStore
// keeps them in a JetStream KV bucket.
//
// Errors: ErrNotFound, ErrConflict and ErrNoStore as said below, possibly
// wrapped; anything else is the store being unreachable.
type Store interface {
	// Get returns appID's entry: ErrNotFound when there is none,
	// ErrNoStore when the store itself does not exist.
	Get(ctx context.Context, appID string) (Entry, error)
	// Put writes val for appID if the entry's revision is rev, where rev 0
	// means there must be no entry (create); it returns the new revision.
	// ErrConflict when the revision is another (another writer was first,
	// or the entry exists for rev 0); ErrNoStore when the store does not
	// exist.
	Put(ctx context.Context, appID string, val []byte, rev uint64) (uint64, error)
	// Delete removes appID's entry if its revision is rev (any revision
	// for 0): ErrNotFound when there is none, ErrConflict when the
	// revision is another, ErrNoStore when the store does not exist.
	Delete(ctx context.Context, appID string, rev uint64) error
	// Watch sends every entry the store holds, then one Event with Synced
	// set, then every change as it happens, until ctx is done or the watch
	// breaks (the store went away or was re-created, the connection was
	// lost for good): then it closes the channel, and the caller watches
	// again. ErrNoStore when the store does not exist.
	Watch(ctx context.Context) (<-chan Event, error)
}

// Entry is one stored value.
type Entry struct {
	AppID string // the key
	Value []byte
	Rev   uint64
}

// Event is one item of a Store's watch: an entry written (Value set),
// deleted (Deleted), or the end of the entries that existed when the watch
// began (Synced; the other fields are empty).
type Event struct {
	Entry
	Deleted bool
	Synced  bool
}

var (
	// ErrNotFound: no entry for the app id.
	ErrNotFound = errors.New("registry: no such bot")
	// ErrConflict: the entry is not at the revision the write expected.
	ErrConflict = errors.New("registry: the entry was changed by another writer")
	// ErrNoStore: the store (the KV bucket) does not exist.
	ErrNoStore = errors.New("registry: the bot registry does not exist yet")
	// ErrExists: Add found the app id registered already.
	ErrExists = errors.New("registry: the bot is registered already")
)
