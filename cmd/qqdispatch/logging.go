package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/term"
)

// isTerminal reports whether w is a terminal (only an *os.File can be).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// setLogFormats makes zerolog write durations as Go durations with their
// unit ("grace":"30s", "took":"1.5s"), not as bare numbers. zerolog keeps
// this setting in package variables, so it is set once, by main (and by
// the tests' TestMain) before anything logs.
func setLogFormats() {
	zerolog.DurationFieldFormat = zerolog.DurationFormatString
}

// newLogger builds the process logger: JSON lines, or the console format
// when asked or (auto) when w is a terminal.
func newLogger(w io.Writer, format, level string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil || level == "" {
		return zerolog.Logger{}, fmt.Errorf("--log-level: %q is not trace, debug, info, warn, error or disabled", level)
	}
	out := w
	switch format {
	case "json":
	case "console":
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339, NoColor: !isTerminal(w)}
	case "auto":
		if isTerminal(w) {
			out = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339}
		}
	default:
		return zerolog.Logger{}, fmt.Errorf("--log-format: %q is not auto, json or console", format)
	}
	return zerolog.New(out).Level(lvl).With().Timestamp().Logger(), nil
}
