package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
)

// Operator mistakes: a second serve on a --data-dir in use, a TLS server
// whose CA the client does not know, a wrong NATS password, a secret file
// other users can read.

// TestNATSListenTaken: serve and demo on a --nats-listen port another
// process has refuse in one line naming the flag, not with the embedded
// server's log line and text.
func TestNATSListenTaken(t *testing.T) {
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	addr := ln.Addr().String()
	for _, args := range [][]string{
		{"serve", "--sim", "--data-dir", filepath.Join(t.TempDir(), "data"), "--nats-listen", addr, "--http-listen", ""},
		{"demo", "--nats-listen", addr},
	} {
		r := runCLI(t, nil, args...)
		oneErrorLine(t, r, 1, "qqdispatch: --nats-listen: listen tcp "+addr+": ", "address already in use")
	}
}

// TestServeDataDirLock: a second serve on a --data-dir in use refuses in
// one line before it opens the store, and the first keeps working; a serve
// that was SIGKILLed leaves no lock behind.
func TestServeDataDirLock(t *testing.T) {
	if testing.Short() {
		t.Skip("runs serve processes")
	}
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	t.Parallel()
	data := filepath.Join(t.TempDir(), "data")
	second := []string{"serve", "--sim", "--data-dir", data, "--nats-listen", "127.0.0.1:0", "--http-listen", ""}

	first := startServe(t, nil, "--sim", "--data-dir", data)
	r := runCLI(t, nil, second...)
	oneErrorLine(t, r, 1, "qqdispatch: --data-dir: "+data+" is in use by another qqdispatch serve",
		fmt.Sprintf("(pid %d on ", os.Getpid()), "give each serve its own --data-dir")
	r = runCLI(t, nil, "send", "--nats-url", first.NATSURL, "--scene", "group", "--target", "G1", "--content", "still here", "--wait", "--timeout", "20s")
	if r.code != 0 || !strings.Contains(r.stdout, `"sent"`) {
		t.Fatalf("the first serve after the refusal:\n%s", r)
	}
	first.stop(t)

	// A serve process that dies holding the store.
	ready := filepath.Join(t.TempDir(), "ready.json")
	cmd := exec.Command(binary, "serve", "--sim", "--data-dir", data, "--nats-listen", "127.0.0.1:0", "--http-listen", "",
		"--ready-file", ready, "--log-format", "json")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	var log syncBuffer
	cmd.Stdout, cmd.Stderr = io.Discard, &log
	dieWithTest(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	waitFor(t, "the serve process to be ready", 30*time.Second, func() bool {
		_, err := os.Stat(ready)
		return err == nil
	})
	r = runCLI(t, nil, second...)
	oneErrorLine(t, r, 1, "--data-dir", fmt.Sprintf("(pid %d on ", cmd.Process.Pid))
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	// Its lock went with it: the next serve opens the store, jobs and all.
	again := startServe(t, nil, "--sim", "--data-dir", data)
	r = runCLI(t, nil, "send", "--nats-url", again.NATSURL, "--scene", "group", "--target", "G1", "--content", "after the crash", "--wait", "--timeout", "20s")
	if r.code != 0 || !strings.Contains(r.stdout, `"sent"`) {
		t.Fatalf("serve after a SIGKILLed one on the same --data-dir:\n%s\nkilled serve's log:\n%s", r, log.String())
	}
}

// tlsServer is a nats-server that requires TLS with a certificate from a
// private CA, and a user name and password.
type tlsServer struct {
	srv    *natsserver.Server
	opts   *natsserver.Options
	url    string
	caFile string
}

const (
	tlsUser     = "worker"
	tlsPassword = "pw-Right-7c1f"
)

func startTLSServer(t *testing.T) *tlsServer {
	t.Helper()
	dir := t.TempDir()
	caFile, cert := testCA(t, dir)
	opts := &natsserver.Options{
		Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true,
		JetStream: true, StoreDir: filepath.Join(dir, "js"),
		Users: []*natsserver.User{{Username: tlsUser, Password: tlsPassword}},
		TLS:   true, TLSTimeout: 5,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
	}
	srv, err := natsserver.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("TLS server not ready")
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	addr := srv.Addr().(*net.TCPAddr)
	return &tlsServer{srv: srv, opts: opts, url: fmt.Sprintf("tls://127.0.0.1:%d", addr.Port), caFile: caFile}
}

// testCA makes a CA (written to dir/ca.pem) and a server certificate for
// 127.0.0.1 signed by it.
func testCA(t *testing.T, dir string) (string, tls.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "qqdispatch test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return caFile, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestNATSConnectErrorsSayWhy: a server whose CA the client does not know
// and a wrong password end serve (and the short-lived commands) at once with
// one line saying why and which flag to check; with the CA and the right
// password serve starts; when the server stops accepting its password
// later, serve stops and says why instead of waiting forever.
func TestNATSConnectErrorsSayWhy(t *testing.T) {
	if testing.Short() {
		t.Skip("starts serve")
	}
	t.Parallel()
	ts := startTLSServer(t)
	base := []string{"serve", "--sim", "--nats-url", ts.url, "--http-listen", "", "--log-format", "json", "--log-level", "error"}
	send := []string{"send", "--nats-url", ts.url, "--scene", "group", "--target", "G1", "--content", "x"}
	const wrong = "pw-Wrong-d00d"
	userEnv := func(pw string) map[string]string { return map[string]string{"NATS_USER": tlsUser, "NATS_PASSWORD": pw} }

	cases := []struct {
		name  string
		env   map[string]string
		args  []string
		wants []string
	}{
		{"serve without the CA", userEnv(tlsPassword), base,
			[]string{"connect to NATS at " + ts.url, "x509: certificate signed by unknown authority", "set --nats-tls-ca (NATS_TLS_CA)"}},
		{"serve with a wrong password", userEnv(wrong), append(base, "--nats-tls-ca", ts.caFile),
			[]string{"connect to NATS at " + ts.url, "the server refused the credentials: check --nats-user and NATS_PASSWORD"}},
		{"send without the CA", userEnv(tlsPassword), send,
			[]string{"unknown authority", "--nats-tls-ca"}},
		{"send with a wrong password", userEnv(wrong), append(send, "--nats-tls-ca", ts.caFile),
			[]string{"the server refused the credentials", "NATS_PASSWORD"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := runCLI(t, tc.env, tc.args...)
			oneErrorLine(t, r, 1, tc.wants...)
			if strings.Contains(r.stderr, wrong) || strings.Contains(r.stderr, tlsPassword) {
				t.Fatalf("a password was printed:\n%s", r)
			}
		})
	}

	t.Run("serve with both, then its password is revoked", func(t *testing.T) {
		// A server of its own: the cases above run after this one, against
		// ts as it was.
		ts := startTLSServer(t)
		s := startServe(t, userEnv(tlsPassword), "--nats-url", ts.url, "--nats-tls-ca", ts.caFile, "--sim")
		// The server comes back on its port with the password rotated.
		// (Not ReloadOptions: nats-server 2.15.2 writes its options
		// unlocked there while a direct get, which serve's sweeper
		// makes, reads them, and -race fails the test.)
		changed := ts.opts.Clone()
		changed.Port = ts.srv.Addr().(*net.TCPAddr).Port
		changed.Users = []*natsserver.User{{Username: tlsUser, Password: "pw-Rotated-9e2a"}}
		ts.srv.Shutdown()
		ts.srv.WaitForShutdown()
		rotated, err := natsserver.NewServer(changed)
		if err != nil {
			t.Fatal(err)
		}
		go rotated.Start()
		t.Cleanup(func() { rotated.Shutdown(); rotated.WaitForShutdown() })
		if !rotated.ReadyForConnections(10 * time.Second) {
			t.Fatal("the server did not come back")
		}
		var code int
		select {
		case code = <-s.done:
			s.exited, s.code = true, code
		case <-time.After(30 * time.Second):
			t.Fatalf("serve still runs 30s after its password stopped working:\n%s", s.stderr)
		}
		last := lastLine(s.stderr.String())
		if code != 1 || !strings.Contains(last, "lost the connection to NATS at "+ts.url+" for good: ") ||
			!strings.Contains(last, "the server refused the credentials: check --nats-user and NATS_PASSWORD") {
			t.Fatalf("exit %d, last line %q; want 1 and why\n%s", code, last, s.stderr)
		}
		if strings.Contains(s.stderr.String(), tlsPassword) {
			t.Fatal("the password was printed")
		}
	})
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

// TestServeWarnsOfAnOpenSecretFile: a secret file other users can read gets
// a warning naming the flag, the file and its mode, never the secret; a
// private one gets none.
func TestServeWarnsOfAnOpenSecretFile(t *testing.T) {
	t.Parallel()
	const secret = "s3cret-Open-4f1e"
	dir := t.TempDir()
	for _, tc := range []struct {
		mode os.FileMode
		warn bool
	}{{0o644, true}, {0o604, true}, {0o640, false}, {0o600, false}, {0o400, false}} {
		t.Run(fmt.Sprintf("%04o", tc.mode), func(t *testing.T) {
			file := filepath.Join(dir, fmt.Sprintf("secret-%04o", tc.mode))
			if err := os.WriteFile(file, []byte(secret+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(file, tc.mode); err != nil {
				t.Fatal(err)
			}
			// A bad --nats-listen ends serve right after it read the secret.
			r := runCLI(t, map[string]string{"QQ_APP_ID": "102030"}, "serve", "--app-secret-file", file, "--log-format", "json",
				"--http-listen", "", "--data-dir", filepath.Join(dir, "data"), "--nats-listen", "127.0.0.1:x")
			if r.code != 2 || !strings.Contains(r.stderr, "--nats-listen") {
				t.Fatalf("want the --nats-listen usage error\n%s", r)
			}
			warned := strings.Contains(r.stderr, `"--app-secret-file is readable by other users`)
			if warned != tc.warn {
				t.Fatalf("warned %v, want %v\n%s", warned, tc.warn, r)
			}
			if tc.warn && !strings.Contains(r.stderr, fmt.Sprintf(`"mode":"%04o"`, tc.mode)) || !tc.warn && strings.Count(r.stderr, "\n") != 1 {
				t.Fatalf("stderr:\n%s", r.stderr)
			}
			if strings.Contains(r.stderr, secret) {
				t.Fatal("the secret was printed")
			}
		})
	}
}
