package natsserver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// lockHolderEnv makes the test binary a helper process that locks the
// store in the named directory, says so on stdout and waits to be killed.
const lockHolderEnv = "NATSSERVER_TEST_LOCK_HOLDER_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(lockHolderEnv); dir != "" {
		if _, err := lockStore(dir); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		fmt.Println("locked")
		_, _ = io.Copy(io.Discard, os.Stdin) // until killed
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestStoreLock: a second server on a store in use is refused
// before it opens it, and the first keeps working; Stop releases the store.
func TestStoreLock(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	dir := t.TempDir()
	first, err := New(Config{Port: RandomPort, StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = first.Stop(context.Background()) })
	nc, err := first.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}

	second, err := New(Config{Port: RandomPort, StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	err = second.Start(ctx)
	var inUse *StoreInUseError
	if !errors.Is(err, ErrStoreInUse) || !errors.As(err, &inUse) {
		t.Fatalf("second Start on the same store: %v, want ErrStoreInUse", err)
	}
	if want := fmt.Sprintf("pid %d on ", os.Getpid()); !strings.Contains(err.Error(), want) || inUse.Dir != dir {
		t.Errorf("error %q does not say who holds %s (%q)", err, dir, want)
	}
	if second.NATS() != nil {
		t.Error("the refused server was started")
	}
	if _, err := js.AccountInfo(ctx); err != nil {
		t.Fatalf("first server after the refusal: %v", err)
	}

	if err := first.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	third, err := New(Config{Port: RandomPort, StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := third.Start(ctx); err != nil {
		t.Fatalf("Start after the holder stopped: %v", err)
	}
	if err := third.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestStoreLockDiesWithItsProcess: a process that locked the store
// and was SIGKILLed leaves no lock behind.
func TestStoreLockDiesWithItsProcess(t *testing.T) {
	if staleLockPossible {
		t.Skip("this platform's fallback lock outlives its process")
	}
	t.Parallel()
	ctx := testCtx(t)
	dir := t.TempDir()
	holder := exec.Command(os.Args[0], "-test.run=^$")
	holder.Env = append(os.Environ(), lockHolderEnv+"="+dir)
	stdin, err := holder.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Process.Kill(); _ = holder.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "locked\n" {
		t.Fatalf("lock holder said %q, %v", line, err)
	}

	e, err := New(Config{Port: RandomPort, StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(ctx); !errors.Is(err, ErrStoreInUse) {
		t.Fatalf("Start while another process holds the store: %v, want ErrStoreInUse", err)
	}
	if err := holder.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = holder.Wait()
	e, err = New(Config{Port: RandomPort, StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(ctx); err != nil {
		t.Fatalf("Start after the holder was killed: %v", err)
	}
	t.Cleanup(func() { _ = e.Stop(context.Background()) })
}
