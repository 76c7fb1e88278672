package hashstore_test

import (
	"testing"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
)

func TestLocalConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) hashstore.Backend { return hashstore.NewLocal(t.TempDir()) })
}

func TestMemoryConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) hashstore.Backend { return hashstore.NewMemory() })
}
