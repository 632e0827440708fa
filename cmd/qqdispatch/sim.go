package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
)

const simDefaultSecret = "sim-secret"

const simDesc = `
Run the QQ Bot OpenAPI simulator as an HTTP server: the token endpoint, the send and upload endpoints, with the
platform's rules enforced (reply windows, reply budgets, rates, quotas), optional faults, and a control surface
under /_sim/ (messages, rejections, stats, inbound, channels, script, faults, rules, reset, bots).

It prints its base URL and the environment to point 'qqdispatch serve' at it. Passive replies need an inbound
message id the simulator knows: POST /_sim/inbound {"scene":"group","target":"G1"} returns one.

It serves the bot --app-id (secret QQSIM_APP_SECRET) and, with --bots-file, more bots, each with its own tokens and
its own count of every rule. The file has one bot a line: its app id, its secret and optionally a YAML file of its own
rules (like --rules; relative to the file's folder), separated by spaces; blank lines and lines starting with # are
ignored. POST /_sim/bots {"app_id":"...","app_secret":"..."} adds a bot while it runs;
GET /_sim/bots reports each bot, and ?bot=APP_ID narrows /_sim/messages, /_sim/rejections and /_sim/stats.`

const simExamples = `
qqdispatch sim
qqdispatch sim --listen 127.0.0.1:8089 --transient-rate 0.3 --latency 50ms
qqdispatch sim --rules ./sim-rules.yaml
qqdispatch sim --bots-file ./sim-bots.txt         # lines like: 102030406 secret-of-that-bot
curl -s -XPOST http://127.0.0.1:8089/_sim/inbound -d '{"scene":"group","target":"G1"}'
curl -s http://127.0.0.1:8089/_sim/stats`

func cmdSim(ctx context.Context, cl *cli, args []string) error {
	var (
		listen, appID, rulesFile, botsFile string
		transient                          float64
		latency                            time.Duration
	)
	c := newCommand("sim", "qqdispatch sim [flags]", simDesc, simExamples)
	c.String(&listen, "listen", "QQSIM_LISTEN", "127.0.0.1:8089", "listen `host:port` (port 0 picks a free one)")
	c.String(&appID, "app-id", "QQSIM_APP_ID", "102030405", "the default bot's app `id`")
	c.String(&rulesFile, "rules", "QQSIM_RULES", "", "YAML `file` of qqsim.Rules (default: the platform's newest rules)")
	c.String(&botsFile, "bots-file", "QQSIM_BOTS_FILE", "", "`file` of more bots to serve, one \"APP_ID SECRET [RULES_FILE]\" a line")
	c.Float(&transient, "transient-rate", "QQSIM_TRANSIENT_RATE", 0, "share (0..1) of send calls answered HTTP 500")
	c.Duration(&latency, "latency", "QQSIM_LATENCY", 0, "added to every send call, before the rules count it (a network path)")
	c.EnvOnly("QQSIM_APP_SECRET", "the default bot's app secret (default \"sim-secret\")")
	pos, err := c.parse(args, cl.env, cl.stdout)
	if err != nil {
		return err
	}
	if err := c.noArgs(pos); err != nil {
		return err
	}
	if _, _, err := listenPort(c.name, "--listen", listen); err != nil {
		return err
	}
	secret, secretFromEnv := cl.env("QQSIM_APP_SECRET"), true
	if secret == "" {
		secret, secretFromEnv = simDefaultSecret, false
	}
	var rules qqsim.Rules
	if rulesFile != "" {
		if err := readRulesFile(rulesFile, &rules); err != nil {
			return fmt.Errorf("--rules: %w", err)
		}
	}
	var (
		bots     []qqsim.Bot
		botLines []int
	)
	if botsFile != "" {
		if bots, botLines, err = readBotsFile(botsFile, appID); err != nil {
			return err
		}
	}
	sim, err := qqsim.New(qqsim.Config{AppID: appID, AppSecret: secret, Bots: bots, Rules: rules,
		Faults: qqsim.Faults{TransientRate: transient, Latency: latency}})
	if err != nil {
		var ce *qqsim.ConfigError
		if errors.As(err, &ce) {
			switch ce.Field {
			case "Faults.TransientRate":
				return usagef(c.name, "--transient-rate %s", ce.Problem)
			case "Faults.Latency":
				return usagef(c.name, "--latency %s", ce.Problem)
			}
			if m := botField.FindStringSubmatch(ce.Field); m != nil {
				i, _ := strconv.Atoi(m[1])
				return fmt.Errorf("--bots-file %s line %d: its rules: %s %s", botsFile, botLines[i], m[2], ce.Problem)
			}
		}
		return fmt.Errorf("simulator: %w", err)
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	base := "http://" + ln.Addr().String()
	srv := &http.Server{Handler: sim.Handler(), ReadHeaderTimeout: 10 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()

	secretLine := "export QQ_APP_SECRET=" + simDefaultSecret
	if secretFromEnv {
		secretLine = `export QQ_APP_SECRET="$QQSIM_APP_SECRET"`
	}
	fmt.Fprintf(cl.stdout, "QQ OpenAPI simulator listening on %s\n\nPoint a worker at it:\n"+
		"  export QQ_APP_ID=%s\n  %s\n  export QQ_API_BASE=%s\n  export QQ_TOKEN_URL=%s/app/getAppAccessToken\n"+
		"  qqdispatch serve\n\nControl surface: %s/_sim/stats, /_sim/messages, /_sim/rejections, POST /_sim/inbound\n",
		base, appID, secretLine, base, base, base)
	if len(bots) > 0 {
		fmt.Fprintf(cl.stdout, "Serving %d more bots from %s: %s/_sim/bots\n", len(bots), botsFile, base)
	}

	select {
	case err := <-done:
		return fmt.Errorf("simulator server: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	<-done
	return nil
}

// botField matches the fields of qqsim.Config.Bots in a *qqsim.ConfigError.
var botField = regexp.MustCompile(`^Bots\[(\d+)\]\.Rules\.(.*)$`)

// readRulesFile decodes a YAML file of qqsim.Rules into r; unknown keys are
// errors. Errors start with the path.
func readRulesFile(path string, r *qqsim.Rules) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(r); err != nil {
		return fmt.Errorf("%s: %w", path, yamlText(err))
	}
	return nil
}

var (
	yamlUnknownKey = regexp.MustCompile(`^line (\d+): field (.+) not found in type \S+$`)
	yamlBadValue   = regexp.MustCompile("^line (\\d+): cannot unmarshal !!\\w+ `(.*)` into (\\S+)$")
)

// yamlText says a YAML file's type errors in the file's words ("line 2:
// unknown key passive_windw", "line 3: \"soon\" is not a duration"),
// without the decoder's prefix or Go type names such as
// qqsim.SceneRules. Other errors (syntax) are returned as they are.
func yamlText(err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return err
	}
	msgs := make([]string, 0, len(te.Errors))
	for _, e := range te.Errors {
		if m := yamlUnknownKey.FindStringSubmatch(e); m != nil {
			e = "line " + m[1] + ": unknown key " + m[2]
		} else if m := yamlBadValue.FindStringSubmatch(e); m != nil {
			e = fmt.Sprintf("line %s: %q is not %s", m[1], m[2], yamlWant(m[3]))
		}
		msgs = append(msgs, e)
	}
	return errors.New(strings.Join(msgs, "; "))
}

// yamlWant names what a value of the Go type typ is in a YAML file.
func yamlWant(typ string) string {
	switch {
	case typ == "time.Duration":
		return "a duration (e.g. 30s, 5m)"
	case strings.HasPrefix(typ, "int"), strings.HasPrefix(typ, "uint"):
		return "a whole number"
	case strings.HasPrefix(typ, "float"):
		return "a number"
	case typ == "bool":
		return "true or false"
	case typ == "string":
		return "text"
	case strings.HasPrefix(typ, "[]"):
		return "a list"
	default: // a struct or a map
		return "a map of keys"
	}
}

// readBotsFile reads --bots-file: one bot a line, "APP_ID SECRET" and
// optionally a YAML file of the bot's own rules (relative to the bots
// file's folder), separated by spaces or tabs; blank lines and lines
// starting with # are skipped. An app id twice, or defaultApp (the --app-id
// bot), is an error. Errors name the line, never its content: it holds a
// secret. lines[i] is the line of bots[i].
func readBotsFile(path, defaultApp string) (bots []qqsim.Bot, lines []int, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("--bots-file: %w", err)
	}
	seen := map[string]int{defaultApp: 0}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 && len(f) != 3 {
			return nil, nil, fmt.Errorf("--bots-file %s line %d: want an app id, a secret and optionally a rules file, separated by spaces; got %d fields", path, i+1, len(f))
		}
		if prev, dup := seen[f[0]]; dup {
			where := "by --app-id"
			if prev > 0 {
				where = fmt.Sprintf("on line %d", prev)
			}
			return nil, nil, fmt.Errorf("--bots-file %s line %d: app id %s is already served %s", path, i+1, f[0], where)
		}
		seen[f[0]] = i + 1
		bot := qqsim.Bot{AppID: f[0], AppSecret: f[1]}
		if len(f) == 3 {
			rulesPath := f[2]
			if !filepath.IsAbs(rulesPath) {
				rulesPath = filepath.Join(filepath.Dir(path), rulesPath)
			}
			bot.Rules = new(qqsim.Rules)
			if err := readRulesFile(rulesPath, bot.Rules); err != nil {
				return nil, nil, fmt.Errorf("--bots-file %s line %d: rules: %w", path, i+1, err)
			}
		}
		bots, lines = append(bots, bot), append(lines, i+1)
	}
	if len(bots) == 0 {
		return nil, nil, fmt.Errorf("--bots-file %s: no bots (want lines of an app id and a secret)", path)
	}
	return bots, lines, nil
}
