package storetest

import (
	"context"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/crypt"
)

// Password is the password of the repositories Options makes.
const Password = "storetest password"

// Options returns o made ready for an encrypted test repository: the
// password Password (unless o has one) and the cheapest key derivation
// (unless o sets one), so that Init and Open take milliseconds.
func Options(o hashstore.Options) hashstore.Options {
	if o.Password == nil {
		o.Password = func(context.Context) ([]byte, error) { return []byte(Password), nil }
	}
	if o.KDF.Algorithm == "" {
		o.KDF = crypt.CheapKDF()
	}
	return o
}
