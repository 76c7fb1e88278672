// Package peertest holds helpers for tests of peer clients: a handler
// wrapper that makes an honest server lie, so a test can check that
// every wrong byte is caught by the client, not trusted.
package peertest
