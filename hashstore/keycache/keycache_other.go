//go:build !linux

package keycache

func available() bool { return false }

func (k kernel) Load(string) []byte { return nil }

func (k kernel) Save(string, []byte) {}
