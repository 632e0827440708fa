package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// adminRounds bounds the read-and-write attempts of one Admin change; each
// lost attempt means another writer changed the same bot meanwhile.
const adminRounds = 10

// Admin changes the registry's entries one at a time, each by
// compare-and-set on the entry's revision, so two operators never undo
// each other's change unseen. It is what `qqdispatch bots` runs.
type Admin struct {
	store Store
	now   func() time.Time
}

// NewAdmin edits the entries of store; now stamps Bot.Updated (nil means
// time.Now).
func NewAdmin(store Store, now func() time.Time) (*Admin, error) {
	if store == nil {
		return nil, errors.New("registry: NewAdmin: the store is required")
	}
	if now == nil {
		now = time.Now
	}
	return &Admin{store: store, now: now}, nil
}

// Add registers b, stamped with the current time, and returns it as
// stored. An app id registered already is refused with ErrExists (Replace
// changes an entry); an invalid b with a *FieldError.
func (a *Admin) Add(ctx context.Context, b Bot) (Bot, error) {
	b.Updated = a.now().UTC()
	val, err := Encode(b)
	if err != nil {
		return Bot{}, err
	}
	if _, err := a.store.Put(ctx, b.AppID, val, 0); err != nil {
		if errors.Is(err, ErrConflict) {
			return Bot{}, fmt.Errorf("%w: %s", ErrExists, b.AppID)
		}
		return Bot{}, err
	}
	return b, nil
}

// Replace registers the bot next returns, stamped with the current time,
// replacing its entry if it has one: next is given that entry's bot (nil
// when there is none, or it is unusable), so that what the caller leaves
// unsaid can stay as it was. It returns the bot as stored; a *FieldError
// when next's bot is invalid.
func (a *Admin) Replace(ctx context.Context, appID string, next func(cur *Bot) Bot) (Bot, error) {
	var b Bot
	err := a.change(ctx, appID, true, func(e Entry) ([]byte, error) {
		var cur *Bot
		if e.Rev != 0 {
			if c, err := Decode(appID, e.Value); err == nil {
				cur = &c
			}
		}
		b = next(cur)
		b.AppID, b.Updated = appID, a.now().UTC()
		return Encode(b)
	})
	return b, err
}

// SetPaused pauses or resumes a bot, and reports whether that changed
// anything (a paused bot paused again is left as it is). ErrNotFound when
// the bot is not registered; a *EntryError when its entry is unusable
// (replace it with Add, or Remove it).
func (a *Admin) SetPaused(ctx context.Context, appID string, paused bool) (b Bot, changed bool, err error) {
	err = a.change(ctx, appID, false, func(cur Entry) ([]byte, error) {
		if b, err = Decode(appID, cur.Value); err != nil {
			return nil, err
		}
		if changed = b.Paused != paused; !changed {
			return nil, nil
		}
		b.Paused, b.Updated = paused, a.now().UTC()
		return Encode(b)
	})
	return b, changed, err
}

// Remove unregisters a bot, whether its entry is usable or not.
// ErrNotFound when it is not registered.
func (a *Admin) Remove(ctx context.Context, appID string) error {
	err := a.store.Delete(ctx, appID, 0)
	if errors.Is(err, ErrNoStore) || errors.Is(err, ErrNotFound) {
		return fmt.Errorf("%w: %s", ErrNotFound, appID)
	}
	return err
}

// List returns every registered bot sorted by app id, and the entries
// that are not usable bots, sorted by key. ErrNoStore when the store does
// not exist (no bot was ever added).
func (a *Admin) List(ctx context.Context) ([]Bot, []*EntryError, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, err := a.store.Watch(ctx)
	if err != nil {
		return nil, nil, err
	}
	var (
		bots []Bot
		bad  []*EntryError
	)
	for ev := range events {
		switch {
		case ev.Synced:
			slices.SortFunc(bots, func(x, y Bot) int { return strings.Compare(x.AppID, y.AppID) })
			slices.SortFunc(bad, func(x, y *EntryError) int { return strings.Compare(x.Key, y.Key) })
			return bots, bad, nil
		case ev.Deleted:
			continue
		}
		b, err := Decode(ev.AppID, ev.Value)
		var ee *EntryError
		if errors.As(err, &ee) {
			ee.Rev = ev.Rev
			bad = append(bad, ee)
			continue
		}
		bots = append(bots, b)
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	return nil, nil, errors.New("registry: the watch ended before it listed every entry")
}

// change writes what next returns for appID's current entry by
// compare-and-set, reading it again when another writer was first. next
// returns nil to write nothing. A missing entry is ErrNotFound unless
// create is set (then next sees revision 0).
func (a *Admin) change(ctx context.Context, appID string, create bool, next func(cur Entry) ([]byte, error)) error {
	for range adminRounds {
		cur, err := a.store.Get(ctx, appID)
		switch {
		case create && errors.Is(err, ErrNotFound):
			cur = Entry{AppID: appID}
		case errors.Is(err, ErrNotFound) || !create && errors.Is(err, ErrNoStore):
			return fmt.Errorf("%w: %s", ErrNotFound, appID)
		case err != nil:
			return err
		}
		val, err := next(cur)
		if err != nil || val == nil {
			return err
		}
		_, err = a.store.Put(ctx, appID, val, cur.Rev)
		if !errors.Is(err, ErrConflict) {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return fmt.Errorf("%w: %s changed %d times while being written", ErrConflict, appID, adminRounds)
}
