// Package pluginproc runs the Plakar storage plugin (package plugin) as
// Plakar runs it (plugins.connectPlugin in plakar): the executable started
// with pipes on its standard input and output, which carry gRPC, and the
// store is integration-grpc's client, the one Plakar uses for storage
// connectors of API v1. The plugin's tests and the benchmark use it.
package pluginproc

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	gstorage "github.com/PlakarKorp/integration-grpc/storage"
	"github.com/PlakarKorp/kloset/connectors/storage"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/plakar-oci/ocistore/host"
)

// Build builds the plugin package at pkg (a directory, as go build takes
// it) into dir, and returns the executable's path.
func Build(pkg, dir string) (string, error) {
	exe := filepath.Join(dir, "ocistore-storage")
	if out, err := exec.Command("go", "build", "-o", exe, pkg).CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
	}
	return exe, nil
}

// Env is the environment of a plugin process, with its caches in dir.
func Env(dir string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, host.EnvCacheDir+"=") {
			env = append(env, kv)
		}
	}
	return append(env, host.EnvCacheDir+"="+dir)
}

// Process is one plugin process and the gRPC connection to it.
type Process struct {
	conn   *stdioConn
	client *grpc.ClientConn
}

// Spawn starts the executable exe with environment env, its standard
// error to stderr.
func Spawn(exe string, env []string, stderr io.Writer) (*Process, error) {
	cmd := exec.Command(exe)
	cmd.Env = env
	cmd.Stderr = stderr
	wr, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	rd, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	conn := &stdioConn{stdin: rd.(*os.File), stdout: wr.(*os.File), cmd: cmd, eof: make(chan struct{})}
	client, err := grpc.NewClient("127.0.0.1:0",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) { return conn, nil }),
	)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return &Process{conn: conn, client: client}, nil
}

// Store is Plakar's storage.Store for the plugin: Init with config.
func (p *Process) Store(ctx context.Context, config map[string]string) (storage.Store, error) {
	return gstorage.NewStorage(ctx, p.client, "oci", config)
}

// Stop closes the connection and waits for the process, which exits
// when its standard input closes; it returns how it exited.
func (p *Process) Stop() error {
	p.client.Close()
	return p.conn.Close()
}

// CloseInput closes the plugin's standard input, as Plakar's exit does,
// and returns once the plugin has closed its standard output: it ended
// its server.
func (p *Process) CloseInput() {
	p.conn.stdout.Close()
	<-p.conn.eof
}

// Kill kills the process.
func (p *Process) Kill() error { return p.conn.cmd.Process.Kill() }

// Pid is the process's.
func (p *Process) Pid() int { return p.conn.cmd.Process.Pid }

// stdioConn is a net.Conn on the plugin's standard output (read) and input
// (write), as plakar's StdioConn; Close waits for the process.
type stdioConn struct {
	stdin, stdout *os.File
	cmd           *exec.Cmd
	once          sync.Once
	err           error
	eof           chan struct{}
	eofOnce       sync.Once
}

var stdioAddr = &net.UnixAddr{Name: "stdio", Net: "unix"}

func (c *stdioConn) Read(b []byte) (int, error) {
	n, err := c.stdin.Read(b)
	if err == io.EOF {
		c.eofOnce.Do(func() { close(c.eof) })
	}
	return n, err
}

func (c *stdioConn) Write(b []byte) (int, error)        { return c.stdout.Write(b) }
func (c *stdioConn) LocalAddr() net.Addr                { return stdioAddr }
func (c *stdioConn) RemoteAddr() net.Addr               { return stdioAddr }
func (c *stdioConn) SetDeadline(t time.Time) error      { return c.stdin.SetDeadline(t) }
func (c *stdioConn) SetReadDeadline(t time.Time) error  { return c.stdin.SetReadDeadline(t) }
func (c *stdioConn) SetWriteDeadline(t time.Time) error { return c.stdout.SetWriteDeadline(t) }

func (c *stdioConn) Close() error {
	c.once.Do(func() {
		c.stdin.Close()
		c.stdout.Close()
		c.err = c.cmd.Wait()
	})
	return c.err
}
