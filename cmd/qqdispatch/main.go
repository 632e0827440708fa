// Command qqdispatch is the queue-backed outbound message dispatcher for QQ
// bots: one binary that runs a worker (serve), publishes jobs (send), reads
// outcomes (outcome), administers the dead-letter queue (dlq), manages the
// bot registry (bots), shows the fleet (status) and runs the QQ OpenAPI simulator (sim). Run `qqdispatch
// help` for the commands and docs/cli.md for the whole reference.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
)

func main() {
	setLogFormats()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// cli is what every command gets from run: the process's environment and
// standard streams.
type cli struct {
	env    func(string) string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	// refused is called by a short command's connection when the NATS
	// server refuses it a permission (shortLivedHandlers): run ends the
	// command's context at once, and its error is the refusal, not a
	// timeout waiting for a reply that cannot come.
	refused func(error)
}

// commandFunc runs one command with its arguments (after the command name).
type commandFunc func(ctx context.Context, cl *cli, args []string) error

type commandInfo struct {
	name    string
	summary string
	run     commandFunc
}

func commands() []commandInfo {
	return []commandInfo{
		{"serve", "run a worker (embedded JetStream and the simulator when nothing is configured)", cmdServe},
		{"send", "publish a job, or many from a JSON Lines file; --wait prints its outcome", cmdSend},
		{"outcome", "print a job's outcome; --watch waits for it", cmdOutcome},
		{"dlq", "list, show, replay and purge the dead-letter queue", cmdDLQ},
		{"bots", "manage the bot registry: add, ls, pause, resume and rm bots", cmdBots},
		{"status", "show the fleet: members, partition owners, backlog and lag; --watch keeps it live", cmdStatus},
		{"sim", "run the QQ OpenAPI simulator as an HTTP server", cmdSim},
		{"demo", "run a worker on the simulator with a broadcast and live replies, and watch it", cmdDemo},
		{"version", "print the version", cmdVersion},
	}
}

// run is the whole program: it parses args, runs one command and returns
// the exit status: 0 success, 1 a runtime error (or an outcome that is not
// delivered), 2 a usage error.
func run(ctx context.Context, args []string, env func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	cl := &cli{env: env, stdin: stdin, stdout: stdout, stderr: stderr}
	if len(args) == 0 {
		printUsage(stderr)
		return 2
	}
	name, rest := args[0], args[1:]
	switch name {
	case "help", "-h", "-help", "--help":
		if len(rest) > 0 {
			return run(ctx, []string{rest[0], "--help"}, env, stdin, stdout, stderr)
		}
		printUsage(stdout)
		return 0
	case "-v", "-version", "--version":
		name = "version"
	}
	for _, c := range commands() {
		if c.name == name {
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			var (
				mu     sync.Mutex
				denial error
			)
			cl.refused = func(err error) {
				mu.Lock()
				if denial == nil {
					denial = err
				}
				mu.Unlock()
				cancel()
			}
			err := c.run(ctx, cl, rest)
			mu.Lock()
			if denial != nil && err != nil && !errors.Is(err, errHelp) {
				err = &refusedError{err: denial}
			}
			mu.Unlock()
			return exitCode(err, stderr)
		}
	}
	fmt.Fprintf(stderr, "qqdispatch: unknown command %q (run 'qqdispatch help' for the list)\n", name)
	return 2
}

func printUsage(w io.Writer) {
	var b strings.Builder
	b.WriteString("qqdispatch: a queue-backed outbound message dispatcher for QQ bots.\n\n")
	b.WriteString("Usage: qqdispatch <command> [flags]\n\nCommands:\n")
	for _, c := range commands() {
		fmt.Fprintf(&b, "  %-9s %s\n", c.name, c.summary)
	}
	b.WriteString("\nRun 'qqdispatch <command> --help' for a command's flags, environment variables and examples.\n")
	b.WriteString("Every flag has an environment variable; a flag given on the command line wins.\n")
	_, _ = io.WriteString(w, b.String())
}

// refusedError is a command stopped by the NATS server's refusal of a
// permission its user does not have.
type refusedError struct{ err error }

func (e *refusedError) Error() string {
	return "the NATS server refused this user: " + e.err.Error() + " (docs/security.md says which user may do what)"
}

func (e *refusedError) Unwrap() error { return e.err }

// errHelp is returned by a command that printed its help: exit 0.
var errHelp = errors.New("help shown")

// usageError is a mistake in the command line: exit 2.
type usageError struct {
	cmd string // e.g. "send", "dlq ls"
	msg string
}

func (e *usageError) Error() string { return e.msg }

func usagef(cmd, format string, args ...any) error {
	return &usageError{cmd: cmd, msg: fmt.Sprintf(format, args...)}
}

// exitStatus ends a command with a status and nothing more to say (e.g.
// send --wait whose outcome is not delivered: the outcome is the message).
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// exitCode prints err as one line and maps it to the exit status.
func exitCode(err error, stderr io.Writer) int {
	if err == nil || errors.Is(err, errHelp) {
		return 0
	}
	var st exitStatus
	if errors.As(err, &st) {
		return int(st)
	}
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "qqdispatch %s: %s (run 'qqdispatch %s --help')\n", ue.cmd, oneLine(ue.msg), ue.cmd)
		return 2
	}
	fmt.Fprintf(stderr, "qqdispatch: %s\n", userText(err))
	return 1
}

// internalPackages are this module's packages whose names start their
// errors ("queue: ..."). The commands wrap errors in the user's terms
// (flag, file, stream, bucket); the package names add nothing to that and
// are left out of what the user reads.
func internalPackages() []string {
	return []string{"queue", "ratelimit", "dispatcher", "qqapi", "qqsim", "qqsend", "worker", "sched", "telemetry", "producer", "natsserver", "registry", "botstore"}
}

// userText is err as one line for the user: without the package names
// that start the messages of this module's packages.
func userText(err error) string {
	s := oneLine(err.Error())
	for _, pkg := range internalPackages() {
		p := pkg + ": "
		if strings.HasPrefix(s, p) {
			s = s[len(p):]
		}
		for _, sep := range []string{": ", "; ", "("} {
			s = strings.ReplaceAll(s, sep+p, sep)
		}
	}
	return s
}

// oneLine joins a multi-line message (errors.Join) into one line.
func oneLine(s string) string {
	return strings.ReplaceAll(strings.TrimSpace(s), "\n", "; ")
}
