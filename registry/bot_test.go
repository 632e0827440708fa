package registry

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/ratelimit"
)

// uncertified is a per-bot override: an uncertified bot's lower rates and
// c2c actives allowed.
const uncertified = `
scenes:
  c2c:
    active:
      allowed: true
      rate:
        per_bot: {limit: 5, per: 1s}
  group:
    active:
      rate:
        per_bot: {limit: 30, per: 1m}
`

func TestBotValidate(t *testing.T) {
	t.Parallel()
	ok := Bot{AppID: "102003004", SecretEnv: "BOT1_SECRET"}
	with := func(change func(b *Bot)) Bot {
		b := ok
		change(&b)
		return b
	}
	cases := []struct {
		name  string
		bot   Bot
		field string // "" when valid
		want  string // in the error
	}{
		{"env secret", ok, "", ""},
		{"file secret", with(func(b *Bot) { b.SecretEnv, b.SecretFile = "", "/run/secrets/bot1" }), "", ""},
		{"windows file secret", with(func(b *Bot) { b.SecretEnv, b.SecretFile = "", `C:\secrets\bot1` }), "", ""},
		{"letters, digits, - and _", with(func(b *Bot) { b.AppID = "bot_1-A" }), "", ""},
		{"64 characters", with(func(b *Bot) { b.AppID = strings.Repeat("a", 64) }), "", ""},
		{"policy override", with(func(b *Bot) { b.Policy = uncertified }), "", ""},
		{"policy as JSON", with(func(b *Bot) { b.Policy = `{"scenes": {"c2c": {"active": {"allowed": true}}}}` }), "", ""},
		{"paused with a note", with(func(b *Bot) { b.Paused, b.Note = true, "brand A, 客服" }), "", ""},
		{"no app id", with(func(b *Bot) { b.AppID = "" }), "app_id", ""},
		{"app id with a dot", with(func(b *Bot) { b.AppID = "a.b" }), "app_id", `"a.b"`},
		{"app id with a wildcard", with(func(b *Bot) { b.AppID = "*" }), "app_id", ""},
		{"app id with a space", with(func(b *Bot) { b.AppID = "a b" }), "app_id", ""},
		{"app id too long", with(func(b *Bot) { b.AppID = strings.Repeat("a", 65) }), "app_id", "64"},
		{"app id not ASCII", with(func(b *Bot) { b.AppID = "机器人" }), "app_id", ""},
		{"no secret source", with(func(b *Bot) { b.SecretEnv = "" }), "secret_file", "one of secret_file and secret_env"},
		{"both secret sources", with(func(b *Bot) { b.SecretFile = "/s" }), "secret_env", "not both"},
		{"relative secret file", with(func(b *Bot) { b.SecretEnv, b.SecretFile = "", "secrets/bot1" }), "secret_file", "absolute"},
		{"secret file with a newline", with(func(b *Bot) { b.SecretEnv, b.SecretFile = "", "/run/x\ny" }), "secret_file", "control"},
		{"secret file too long", with(func(b *Bot) { b.SecretEnv, b.SecretFile = "", "/"+strings.Repeat("a", MaxSecretFile) }), "secret_file", "4096"},
		{"secret env lower case", with(func(b *Bot) { b.SecretEnv = "aBcD1234eFgH5678" }), "secret_env", "upper-case"},
		{"secret env from a digit", with(func(b *Bot) { b.SecretEnv = "1SECRET" }), "secret_env", ""},
		{"secret env with a dash", with(func(b *Bot) { b.SecretEnv = "BOT-1" }), "secret_env", ""},
		{"secret env too long", with(func(b *Bot) { b.SecretEnv = strings.Repeat("A", MaxSecretEnv+1) }), "secret_env", ""},
		{"policy not YAML", with(func(b *Bot) { b.Policy = "scenes: [" }), "policy", "not valid YAML"},
		{"policy unknown key", with(func(b *Bot) { b.Policy = "scenes:\n  c2c:\n    active:\n      alowed: true\n" }), "policy", "alowed"},
		{"policy bad value", with(func(b *Bot) { b.Policy = "headroom: 2\n" }), "policy", "headroom"},
		{"policy too long", with(func(b *Bot) { b.Policy = "# " + strings.Repeat("x", MaxPolicy) }), "policy", "65536"},
		{"note too long", with(func(b *Bot) { b.Note = strings.Repeat("é", MaxNote+1) }), "note", "256"},
		{"note with an escape", with(func(b *Bot) { b.Note = "a\x1b[2Jb" }), "note", "control"},
		{"note not UTF-8", with(func(b *Bot) { b.Note = "a\xffb" }), "note", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := tc.bot.Validate()
			if tc.field == "" {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) || !errors.Is(err, ErrInvalidBot) {
				t.Fatalf("want a *FieldError matching ErrInvalidBot, got %v", err)
			}
			if fe.Field != tc.field || !strings.Contains(err.Error(), tc.field) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q: want field %s and %q in it", err, tc.field, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q has several lines", err)
			}
		})
	}
}

// TestValidateNeverQuotesTheSecretSource: a secret pasted where the name
// of its file or variable goes is refused without being repeated.
func TestValidateNeverQuotesTheSecretSource(t *testing.T) {
	t.Parallel()
	secret := "aB3dE5gH7jK9mN1pQ3sT5vX7zA9cE1gI"
	for _, b := range []Bot{{AppID: "1", SecretEnv: secret}, {AppID: "1", SecretFile: secret}} {
		err := b.Validate()
		if err == nil || strings.Contains(err.Error(), secret) {
			t.Errorf("%+v: want refused without the value, got %v", b, err)
		}
	}
}

func TestPolicyErrorUnwraps(t *testing.T) {
	t.Parallel()
	err := Bot{AppID: "1", SecretEnv: "S", Policy: "headroom: 2\n"}.Validate()
	var pe *ratelimit.PolicyError
	if !errors.As(err, &pe) || pe.Path != "headroom" {
		t.Fatalf("want the policy's *ratelimit.PolicyError at headroom, got %v", err)
	}
}

func TestEncodeDecode(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 12, 2, 21, 0, 0, 0, time.FixedZone("UTC+8", 8*3600))
	b := Bot{AppID: "102003004", SecretFile: "/run/secrets/b", Policy: uncertified, Paused: true, Note: "n", Updated: at}
	val, err := Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	if err := json.Unmarshal(val, &fields); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"app_id", "secret_file", "policy", "paused", "note", "updated"} {
		if _, ok := fields[k]; !ok {
			t.Errorf("encoded entry lacks %q: %s", k, val)
		}
	}
	got, err := Decode(b.AppID, val)
	if err != nil || !got.Equal(b) || got.Updated.Location() != time.UTC {
		t.Fatalf("Decode(Encode(b)) = %+v, %v; want %+v in UTC", got, err, b)
	}
	if _, err := Encode(Bot{AppID: "x"}); !errors.Is(err, ErrInvalidBot) {
		t.Errorf("Encode of an invalid bot: want ErrInvalidBot, got %v", err)
	}
}

func TestDecodeRefusesBadEntries(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, key, val, want string
	}{
		{"not JSON", "1", "garbage", "not JSON"},
		{"JSON of another shape", "1", `[1,2]`, "not JSON"},
		{"null", "1", `null`, "not its key"},
		{"under another key", "2", `{"app_id":"1","secret_env":"S"}`, "not its key"},
		{"invalid bot", "1", `{"app_id":"1"}`, "secret_file"},
		{"bad policy", "1", `{"app_id":"1","secret_env":"S","policy":"headroom: 2"}`, "policy"},
		{"too big", "1", `{"app_id":"1","secret_env":"S","note":"` + strings.Repeat("x", MaxEntry) + `"}`, "longer than"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Decode(tc.key, []byte(tc.val))
			var ee *EntryError
			if !errors.As(err, &ee) || !errors.Is(err, ErrBadEntry) || ee.Key != tc.key || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want a *EntryError for key %s saying %q, got %v", tc.key, tc.want, err)
			}
		})
	}
	// Fields a newer version adds are ignored.
	if _, err := Decode("1", []byte(`{"app_id":"1","secret_env":"S","priority":3}`)); err != nil {
		t.Errorf("an unknown field: want accepted, got %v", err)
	}
}

func TestSecretSource(t *testing.T) {
	t.Parallel()
	if s := (Bot{SecretFile: "/s"}).SecretSource(); s != "file /s" {
		t.Errorf("file: %q", s)
	}
	if s := (Bot{SecretEnv: "S"}).SecretSource(); s != "env S" {
		t.Errorf("env: %q", s)
	}
}

// FuzzDecode: whatever is stored under a key, Decode does not panic, and a
// bot it accepts is valid, stored under its own key, and survives encoding
// and decoding again unchanged.
func FuzzDecode(f *testing.F) {
	f.Add("102003004", []byte(`{"app_id":"102003004","secret_env":"BOT_SECRET","updated":"2026-12-02T13:00:00Z"}`))
	f.Add("b1", []byte(`{"app_id":"b1","secret_file":"/run/s","paused":true,"note":"x","policy":"scenes:\n  c2c:\n    active:\n      allowed: true\n"}`))
	f.Add("b1", []byte(`{"app_id":"b1","secret_file":"/run/s","policy":"extends: none\n"}`))
	f.Add("b1", []byte(`{"app_id":"b1","secret_env":"S","secret_file":"/s"}`))
	f.Add("a.b", []byte(`{"app_id":"a.b","secret_env":"S"}`))
	f.Add("1", []byte(`null`))
	f.Add("1", []byte(`{"app_id":"1","secret_env":"S","updated":"not a time"}`))
	f.Fuzz(func(t *testing.T, key string, val []byte) {
		b, err := Decode(key, val)
		if err != nil {
			if !errors.Is(err, ErrBadEntry) {
				t.Fatalf("error %v does not match ErrBadEntry", err)
			}
			return
		}
		if b.AppID != key {
			t.Fatalf("accepted app id %q under key %q", b.AppID, key)
		}
		if err := b.Validate(); err != nil {
			t.Fatalf("accepted an invalid bot: %v", err)
		}
		again, err := Encode(b)
		if err != nil {
			t.Fatalf("Encode of an accepted bot: %v", err)
		}
		b2, err := Decode(key, again)
		if err != nil || !b2.Equal(b) {
			t.Fatalf("re-decoded %+v, %v; want %+v", b2, err, b)
		}
	})
}
