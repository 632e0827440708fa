package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// command is one command's flag set, with an environment variable bound to
// every flag and the text of its --help.
type command struct {
	name     string // as typed after qqdispatch, e.g. "dlq ls"
	synopsis string // e.g. "qqdispatch outcome ID [flags]"
	desc     string
	examples string
	fs       *flag.FlagSet
	envOf    map[string]string // flag name -> environment variable
	envOnly  [][2]string       // variables without a flag (secrets): name, meaning
}

func newCommand(name, synopsis, desc, examples string) *command {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return &command{name: name, synopsis: synopsis, desc: desc, examples: examples, fs: fs, envOf: map[string]string{}}
}

func (c *command) bind(name, env string) {
	if env != "" {
		c.envOf[name] = env
	}
}

func (c *command) String(p *string, name, env, def, usage string) {
	c.fs.StringVar(p, name, def, usage)
	c.bind(name, env)
}

func (c *command) Bool(p *bool, name, env string, def bool, usage string) {
	*p = def
	c.fs.Var((*boolValue)(p), name, usage)
	c.bind(name, env)
}

func (c *command) Int(p *int, name, env string, def int, usage string) {
	*p = def
	c.fs.Var((*intValue)(p), name, usage)
	c.bind(name, env)
}

func (c *command) Float(p *float64, name, env string, def float64, usage string) {
	*p = def
	c.fs.Var((*floatValue)(p), name, usage)
	c.bind(name, env)
}

func (c *command) Duration(p *time.Duration, name, env string, def time.Duration, usage string) {
	*p = def
	c.fs.Var((*durationValue)(p), name, usage)
	c.bind(name, env)
}

// Flag values whose parse errors say what a good value looks like (the
// flag package's own say only "parse error").

type boolValue bool

func (v *boolValue) String() string   { return strconv.FormatBool(bool(*v)) }
func (v *boolValue) IsBoolFlag() bool { return true }

func (v *boolValue) Set(s string) error {
	b, err := strconv.ParseBool(strings.TrimSpace(s))
	if err != nil {
		return errors.New("want true or false")
	}
	*v = boolValue(b)
	return nil
}

type intValue int

func (v *intValue) String() string { return strconv.Itoa(int(*v)) }

func (v *intValue) Set(s string) error {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return errors.New("not a whole number")
	}
	*v = intValue(n)
	return nil
}

type floatValue float64

func (v *floatValue) String() string { return strconv.FormatFloat(float64(*v), 'g', -1, 64) }

func (v *floatValue) Set(s string) error {
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil {
		return errors.New("not a number (e.g. 0.25)")
	}
	*v = floatValue(f)
	return nil
}

type durationValue time.Duration

func (v *durationValue) String() string { return time.Duration(*v).String() }

func (v *durationValue) Set(s string) error {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return errors.New("not a duration: give a number with a unit, such as 30s, 5m, 1h30m or 500ms")
	}
	*v = durationValue(d)
	return nil
}

// EnvOnly documents a variable that deliberately has no flag (a secret).
func (c *command) EnvOnly(name, meaning string) {
	c.envOnly = append(c.envOnly, [2]string{name, meaning})
}

// parse parses args (flags may come before, between or after positional
// arguments), then fills every flag not given on the command line from its
// environment variable. It returns the positional arguments. --help prints
// the help to stdout and returns errHelp.
func (c *command) parse(args []string, env func(string) string, stdout io.Writer) ([]string, error) {
	var pos []string
	for {
		err := c.fs.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			c.printHelp(stdout)
			return nil, errHelp
		}
		if err != nil {
			return nil, usagef(c.name, "%s", strings.Replace(err.Error(), " -", " --", 1))
		}
		rest := c.fs.Args()
		if len(rest) == 0 {
			break
		}
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	given := map[string]bool{}
	c.fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var bad error
	c.fs.VisitAll(func(f *flag.Flag) {
		ev, ok := c.envOf[f.Name]
		if !ok || given[f.Name] || bad != nil {
			return
		}
		if v := env(ev); v != "" {
			if err := c.fs.Set(f.Name, v); err != nil {
				bad = usagef(c.name, "environment variable %s: invalid value %q for --%s: %s", ev, v, f.Name, flagReason(err))
			}
		}
	})
	return pos, bad
}

// flagReason is what a flag value's Set said, without the flag package's
// wrapping.
func flagReason(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 && strings.HasPrefix(s, "invalid ") {
		return s[i+2:]
	}
	return s
}

// isSet reports whether the flag was given on the command line or through
// its environment variable.
func (c *command) isSet(name string) bool {
	set := false
	c.fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func (c *command) printHelp(w io.Writer) {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage: %s\n\n%s\n", c.synopsis, strings.TrimSpace(c.desc))
	n := 0
	c.fs.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		b.WriteString("\nFlags (a flag wins over its environment variable):\n")
		c.fs.VisitAll(func(f *flag.Flag) {
			arg, usage := flag.UnquoteUsage(f)
			if arg == "value" {
				arg = valueWord(f.Value)
			}
			if arg != "" {
				arg = " " + arg
			}
			fmt.Fprintf(&b, "  --%s%s\n", f.Name, arg)
			fmt.Fprintf(&b, "        %s", usage)
			if def := f.DefValue; def != "" && def != "false" && def != "0" && def != "0s" {
				fmt.Fprintf(&b, " (default %s)", def)
			}
			if ev := c.envOf[f.Name]; ev != "" {
				fmt.Fprintf(&b, "\n        env %s", ev)
			}
			b.WriteString("\n")
		})
	}
	if len(c.envOnly) > 0 {
		b.WriteString("\nEnvironment only (never a flag, so it stays out of process listings):\n")
		for _, e := range c.envOnly {
			fmt.Fprintf(&b, "  %s\n        %s\n", e[0], e[1])
		}
	}
	if ex := strings.TrimSpace(c.examples); ex != "" {
		b.WriteString("\nExamples:\n")
		for _, line := range strings.Split(ex, "\n") {
			b.WriteString("  " + strings.TrimSpace(line) + "\n")
		}
	}
	_, _ = io.WriteString(w, b.String())
}

// valueWord names a flag's kind of value in --help when its usage does not.
func valueWord(v flag.Value) string {
	switch v.(type) {
	case *boolValue:
		return ""
	case *intValue:
		return "int"
	case *floatValue:
		return "float"
	case *durationValue:
		return "duration"
	}
	return "value"
}

// noArgs rejects positional arguments for commands that take none.
func (c *command) noArgs(pos []string) error {
	if len(pos) > 0 {
		return usagef(c.name, "unexpected argument %q", pos[0])
	}
	return nil
}

// listenPort checks a host:port flag (--nats-listen, --http-listen, sim's
// --listen) before anything starts: a numeric port, 0 for a free one.
func listenPort(cmd, flag, addr string) (host string, port int, err error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, usagef(cmd, "%s: %s", flag, err)
	}
	port, err = strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, usagef(cmd, "%s: %q is not a port", flag, portStr)
	}
	return host, port, nil
}
