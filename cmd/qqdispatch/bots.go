package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/qqdispatch/qqdispatch/queue"
	"github.com/qqdispatch/qqdispatch/queue/botstore"
	"github.com/qqdispatch/qqdispatch/registry"
)

const botsDesc = `
Manage the bot registry: the bots a fleet serves, kept in the KV bucket qqdispatch_bots ({prefix}'s own bucket for
another prefix), one entry per app id, shared by every worker, which see changes without a restart. An entry says
where a worker finds the bot's secret (a file or an environment variable of the worker); the secret itself is never
stored, and never given on the command line.

Subcommands:
  add      register a bot (--replace to change one)
  ls       list the bots: app id, secret source, paused, policy override, updated
  pause    stop serving a bot: its jobs wait
  resume   serve a paused bot again
  rm       unregister a bot: its queued jobs end rejected (pause keeps them)

Each subcommand's flags: qqdispatch bots SUBCOMMAND --help.

Every worker (qqdispatch serve) sends for the registered bots besides the default bot of QQ_APP_ID: a job on
{prefix}.send.{scene}@{app_id}.{target} goes as that bot.`

const botsExamples = `
qqdispatch bots add --app-id 102003004 --secret-env BOT_102003004_SECRET
qqdispatch bots add --app-id 102003005 --secret-file /run/secrets/bot2 --policy uncertified.yaml --note "brand B"
qqdispatch bots ls
qqdispatch bots pause 102003004
qqdispatch bots rm 102003005`

func cmdBots(ctx context.Context, cl *cli, args []string) error {
	if len(args) == 0 {
		return usagef("bots", "a subcommand is required: add, ls, pause, resume or rm")
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		c := newCommand("bots", "qqdispatch bots <add|ls|pause|resume|rm> [flags]", botsDesc, botsExamples)
		c.printHelp(cl.stdout)
		return errHelp
	case "add":
		return botsAdd(ctx, cl, args[1:])
	case "ls", "list":
		return botsList(ctx, cl, args[1:])
	case "pause":
		return botsPause(ctx, cl, args[1:], true)
	case "resume":
		return botsPause(ctx, cl, args[1:], false)
	case "rm", "remove":
		return botsRemove(ctx, cl, args[1:])
	}
	if strings.HasPrefix(args[0], "-") {
		return usagef("bots", "a subcommand is required before the flags: add, ls, pause, resume or rm")
	}
	return usagef("bots", "unknown subcommand %q (want add, ls, pause, resume or rm)", args[0])
}

// botsFlags are the connection flags of the bots subcommands.
type botsFlags struct {
	nats    natsFlags
	timeout time.Duration
}

func (f *botsFlags) register(c *command) {
	f.nats.register(c, defaultNATSURL, "NATS server `URLs`, comma-separated")
	c.Duration(&f.timeout, "timeout", "QQDISPATCH_BOTS_TIMEOUT", 30*time.Second, "give up after this long")
}

func (f *botsFlags) parse(c *command, cl *cli, args []string) ([]string, error) {
	pos, err := c.parse(args, cl.env, cl.stdout)
	f.nats.fromEnv(cl)
	if err == nil && f.timeout <= 0 {
		err = usagef(c.name, "--timeout must be positive")
	}
	return pos, err
}

// open connects and returns the registry's editor on the bots bucket,
// made first when create is set.
func (f *botsFlags) open(ctx context.Context, c *command, create bool) (*registry.Admin, string, func(), error) {
	nc, js, err := f.nats.connectOnce(c.name)
	if err != nil {
		return nil, "", nil, err
	}
	fail := func(err error) (*registry.Admin, string, func(), error) {
		nc.Close()
		return nil, "", nil, err
	}
	names, err := f.nats.resolveNames(ctx, js)
	if err != nil {
		return fail(err)
	}
	if create {
		if _, err := queue.ProvisionBots(ctx, js, names); err != nil {
			return fail(fmt.Errorf("create bucket %s: %w", names.BotsBucket, cause(err)))
		}
	}
	store, err := botstore.New(js, botstore.Config{Names: names})
	if err != nil {
		return fail(err)
	}
	admin, err := registry.NewAdmin(store, nil)
	if err != nil {
		return fail(err)
	}
	return admin, names.BotsBucket, nc.Close, nil
}

// botFlag is the flag of bots add that sets a Bot's field.
func botFlag(field string) string {
	switch field {
	case "app_id":
		return "--app-id"
	case "secret_file":
		return "--secret-file"
	case "secret_env":
		return "--secret-env"
	case "policy":
		return "--policy"
	case "note":
		return "--note"
	}
	return field
}

// readPolicyFile reads a policy file of at most registry.MaxPolicy bytes.
func readPolicyFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	doc, err := io.ReadAll(io.LimitReader(f, registry.MaxPolicy+1))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	if len(doc) > registry.MaxPolicy {
		return "", fmt.Errorf("%s: longer than %d bytes, the most a bot's policy may have", path, registry.MaxPolicy)
	}
	return string(doc), nil
}

// secretFlags are flags some would try in order to give the secret
// itself; they do not exist.
var secretFlags = []string{"secret", "app-secret", "secret-value"}

func botsAdd(ctx context.Context, cl *cli, args []string) error {
	var (
		f       botsFlags
		b       registry.Bot
		policy  string
		replace bool
	)
	c := newCommand("bots add", "qqdispatch bots add --app-id ID (--secret-file PATH | --secret-env NAME) [flags]",
		"Register a bot. Exactly one of --secret-file and --secret-env says where a worker finds its app secret: the\n"+
			"path of a file on the worker's machine, or the name of an environment variable of the worker. The secret itself\n"+
			"is never stored, and never given here. An app id registered already is refused unless --replace.\n"+
			"--policy names a policy file (docs/policy.md) with the bot's own rules, merged over the shipped policy; it is\n"+
			"checked now and stored in the registry. Creates the bucket when it does not exist.",
		"qqdispatch bots add --app-id 102003004 --secret-env BOT_102003004_SECRET\n"+
			"qqdispatch bots add --app-id 102003005 --secret-file /run/secrets/bot2 --policy uncertified.yaml --paused\n"+
			"qqdispatch bots add --app-id 102003005 --secret-file /run/secrets/bot2 --note \"brand B\" --replace")
	f.register(c)
	c.String(&b.AppID, "app-id", "QQDISPATCH_BOTS_APP_ID", "", "the bot's QQ app `id` (1 to 64 of [0-9A-Za-z_-])")
	c.String(&b.SecretFile, "secret-file", "QQDISPATCH_BOTS_SECRET_FILE", "", "absolute `path`, on the worker's machine, of a file holding the app secret")
	c.String(&b.SecretEnv, "secret-env", "QQDISPATCH_BOTS_SECRET_ENV", "", "`name` of the worker's environment variable holding the app secret (upper-case letters, digits, _)")
	c.String(&policy, "policy", "QQDISPATCH_BOTS_POLICY", "", "policy `file` with the bot's own rules, merged over the shipped policy")
	c.Bool(&b.Paused, "paused", "QQDISPATCH_BOTS_PAUSED", false, "register it paused: its jobs wait until it is resumed")
	c.String(&b.Note, "note", "QQDISPATCH_BOTS_NOTE", "", "free `text` for operators")
	c.Bool(&replace, "replace", "QQDISPATCH_BOTS_REPLACE", false, "replace the bot's entry when it is registered already (paused or not, and the note, stay unless given)")
	for _, a := range args {
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if strings.HasPrefix(a, "-") && slices.Contains(secretFlags, name) {
			return usagef(c.name, "--%s: the secret is never given on the command line; use --secret-file PATH or --secret-env NAME", name)
		}
	}
	pos, err := f.parse(c, cl, args)
	if err != nil {
		return err
	}
	if err := c.noArgs(pos); err != nil {
		return err
	}
	switch {
	case b.AppID == "":
		return usagef(c.name, "--app-id is required")
	case b.SecretFile == "" && b.SecretEnv == "":
		return usagef(c.name, "--secret-file or --secret-env is required: where a worker finds the app secret")
	case b.SecretFile != "" && b.SecretEnv != "":
		return usagef(c.name, "give --secret-file or --secret-env, not both")
	}
	if policy != "" {
		doc, err := readPolicyFile(policy)
		if err != nil {
			return fmt.Errorf("--policy: %w", err)
		}
		b.Policy = doc
	}
	if err := b.Validate(); err != nil {
		var fe *registry.FieldError
		if errors.As(err, &fe) && fe.Field == "policy" {
			return fmt.Errorf("--policy %s: %s", policy, strings.TrimPrefix(err.Error(), "bot policy: "))
		}
		if errors.As(err, &fe) {
			return usagef(c.name, "%s: %s", botFlag(fe.Field), fe.Reason)
		}
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	admin, bucket, closeConn, err := f.open(ctx, c, true)
	if err != nil {
		return err
	}
	defer closeConn()
	var (
		stored registry.Bot
		kept   []string // what --replace kept of the entry
	)
	if replace {
		// Paused or not, and the note, are the entry's state, not its
		// configuration: they stay unless given.
		stored, err = admin.Replace(ctx, b.AppID, func(cur *registry.Bot) registry.Bot {
			nb := b
			kept = nil
			if cur != nil && !c.isSet("paused") {
				nb.Paused = cur.Paused
				if cur.Paused {
					kept = append(kept, "paused")
				}
			}
			if cur != nil && !c.isSet("note") && cur.Note != "" {
				nb.Note = cur.Note
				kept = append(kept, "its note")
			}
			return nb
		})
	} else {
		stored, err = admin.Add(ctx, b)
	}
	switch {
	case errors.Is(err, registry.ErrExists):
		return fmt.Errorf("bot %s is registered already (bucket %s): add --replace to replace its entry", b.AppID, bucket)
	case err != nil:
		return fmt.Errorf("register bot %s in bucket %s: %w", b.AppID, bucket, botsError(err))
	}
	state := ""
	if stored.Paused {
		state = ", paused"
	}
	verb := "registered"
	if replace {
		verb = "registered (replacing any entry)"
	}
	fmt.Fprintf(cl.stdout, "bot %s %s: secret from %s%s\n", stored.AppID, verb, stored.SecretSource(), state)
	if len(kept) > 0 {
		fmt.Fprintf(cl.stdout, "kept from its entry: %s (give --paused=false or --note to change them)\n", strings.Join(kept, ", "))
	}
	return nil
}

// botJSON is one line of `bots ls --json`.
type botJSON struct {
	AppID      string     `json:"app_id"`
	SecretFile string     `json:"secret_file,omitempty"`
	SecretEnv  string     `json:"secret_env,omitempty"`
	Policy     string     `json:"policy,omitempty"`
	Paused     bool       `json:"paused"`
	Note       string     `json:"note,omitempty"`
	Updated    *time.Time `json:"updated,omitempty"`
	Invalid    string     `json:"invalid,omitempty"`
}

func botsList(ctx context.Context, cl *cli, args []string) error {
	var (
		f      botsFlags
		asJSON bool
	)
	c := newCommand("bots ls", "qqdispatch bots ls [flags]",
		"List the registered bots by app id, as a table: app id, where the secret comes from (the file's path or the\n"+
			"variable's name, never the secret), paused, policy override, last update, note. Entries that are not usable\n"+
			"bots (written by hand) are listed after the table; workers skip them.",
		"qqdispatch bots ls\nqqdispatch bots ls --json")
	f.register(c)
	c.Bool(&asJSON, "json", "QQDISPATCH_BOTS_JSON", false, "print one JSON object per bot (with its policy) instead of a table")
	pos, err := f.parse(c, cl, args)
	if err != nil {
		return err
	}
	if err := c.noArgs(pos); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	admin, bucket, closeConn, err := f.open(ctx, c, false)
	if err != nil {
		return err
	}
	defer closeConn()
	bots, bad, err := admin.List(ctx)
	if err != nil && !errors.Is(err, registry.ErrNoStore) {
		return fmt.Errorf("list bucket %s: %w", bucket, botsError(err))
	}
	if asJSON {
		enc := json.NewEncoder(cl.stdout)
		enc.SetEscapeHTML(false)
		for _, b := range bots {
			up := b.Updated
			line := botJSON{AppID: b.AppID, SecretFile: b.SecretFile, SecretEnv: b.SecretEnv, Policy: b.Policy,
				Paused: b.Paused, Note: b.Note, Updated: &up}
			if err := enc.Encode(line); err != nil {
				return err
			}
		}
		for _, e := range bad {
			if err := enc.Encode(botJSON{AppID: e.Key, Invalid: entryReason(e)}); err != nil {
				return err
			}
		}
		return nil
	}
	if len(bots) == 0 && len(bad) == 0 {
		fmt.Fprintf(cl.stdout, "no bots registered (bucket %s); add one with `qqdispatch bots add`\n", bucket)
		return nil
	}
	tw := tabwriter.NewWriter(cl.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "APP ID\tSECRET FROM\tPAUSED\tPOLICY\tUPDATED\tNOTE")
	for _, b := range bots {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", b.AppID, clip(printable(b.SecretSource()), 80), yesNo(b.Paused),
			yesNo(b.Policy != ""), b.Updated.UTC().Format(time.RFC3339), dash(clip(printable(b.Note), 60)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, e := range bad {
		fmt.Fprintf(cl.stdout, "entry %s is not a usable bot, workers skip it: %s (replace it with `bots add --replace` or remove it with `bots rm`)\n",
			printable(e.Key), clip(printable(entryReason(e)), 200))
	}
	return nil
}

// entryReason is why an entry is not a usable bot, in one line.
func entryReason(e *registry.EntryError) string {
	s := e.Reason
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return oneLine(s)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// parseAppID reads the one positional app id of pause, resume and rm.
func parseAppID(c *command, pos []string) (string, error) {
	switch {
	case len(pos) == 0:
		return "", usagef(c.name, "an app id is required (see `qqdispatch bots ls`)")
	case len(pos) > 1:
		return "", usagef(c.name, "one app id at a time, got %d arguments", len(pos))
	}
	if !registry.ValidAppID(pos[0]) {
		return "", usagef(c.name, "%q is not an app id (1 to %d of [0-9A-Za-z_-])", printable(clip(pos[0], 80)), registry.MaxAppID)
	}
	return pos[0], nil
}

func botsPause(ctx context.Context, cl *cli, args []string, pause bool) error {
	name, verb, desc := "bots resume", "resumed", "Serve a paused bot again: its waiting jobs go."
	if pause {
		name, verb, desc = "bots pause", "paused", "Stop serving a bot: its jobs wait (they do not go to the DLQ) until `bots resume`."
	}
	return onBot(ctx, cl, args, name, desc, func(ctx context.Context, admin *registry.Admin, id string) error {
		_, changed, err := admin.SetPaused(ctx, id, pause)
		if err != nil {
			return err
		}
		if !changed {
			fmt.Fprintf(cl.stdout, "bot %s was %s already\n", id, verb)
			return nil
		}
		fmt.Fprintf(cl.stdout, "bot %s %s\n", id, verb)
		return nil
	})
}

func botsRemove(ctx context.Context, cl *cli, args []string) error {
	return onBot(ctx, cl, args, "bots rm", "Unregister a bot: workers stop serving it. Its jobs still queued end rejected (rule bot.unknown, to the DLQ) once 30s have passed since their publish, at once for older ones; to keep them waiting, use `bots pause` instead.",
		func(ctx context.Context, admin *registry.Admin, id string) error {
			if err := admin.Remove(ctx, id); err != nil {
				return err
			}
			fmt.Fprintf(cl.stdout, "bot %s removed\n", id)
			return nil
		})
}

// onBot runs the command name (pause, resume, rm: one app id and the
// registry flags) as do, whose registry errors it words for the user.
func onBot(ctx context.Context, cl *cli, args []string, name, desc string, do func(context.Context, *registry.Admin, string) error) error {
	var f botsFlags
	c := newCommand(name, "qqdispatch "+name+" ID [flags]", desc, "qqdispatch "+name+" 102003004")
	f.register(c)
	pos, err := f.parse(c, cl, args)
	if err != nil {
		return err
	}
	id, err := parseAppID(c, pos)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	admin, bucket, closeConn, err := f.open(ctx, c, false)
	if err != nil {
		return err
	}
	defer closeConn()
	if err := do(ctx, admin, id); err != nil {
		return botLookupError(id, bucket, err)
	}
	return nil
}

// botLookupError says what went wrong with bot id, in the user's terms.
func botLookupError(id, bucket string, err error) error {
	var ee *registry.EntryError
	switch {
	case errors.Is(err, registry.ErrNotFound):
		return fmt.Errorf("no bot %s in the registry (bucket %s; see `qqdispatch bots ls`)", id, bucket)
	case errors.As(err, &ee):
		return fmt.Errorf("bot %s: its entry is not a usable bot (%s): replace it with `bots add --replace` or remove it with `bots rm`",
			id, entryReason(ee))
	}
	return fmt.Errorf("bot %s in bucket %s: %w", id, bucket, botsError(err))
}

// botsError drops the package's own wording from a registry error.
func botsError(err error) error {
	if errors.Is(err, registry.ErrConflict) {
		return errors.New("changed by someone else at the same time; try again")
	}
	return cause(err)
}
