// Package e2e holds the end-to-end tests of qqdispatch: real embedded
// JetStream servers, the QQ simulator over HTTP, and real workers.
package e2e
