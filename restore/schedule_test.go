package restore

import (
	"context"
	"fmt"
	"log/slog"
	"testing"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// A request must stay open while it carries an object nobody delivered:
// when another source's copy of an object arrives while the request is
// itself delivering that object, the request is one object closer to
// being unneeded, not two.
func TestRequestCancelledOnlyWhenAllItsObjectsArrived(t *testing.T) {
	s := &scheduler{r: &restorer{logger: slog.New(slog.DiscardHandler)}, ctx: context.Background(), flying: map[*item]bool{}}
	s.sources = []*sourceState{{}, {}}
	var items []*item
	for i := range 5 {
		items = append(items, &item{gr: &group{id: digest.Of([]byte(fmt.Sprint(i))), size: 100}, held: []bool{true, true}, tried: make([]bool, 2)})
	}
	s.pending = len(items)
	batch, _ := s.start(0, items, "planned")
	copies, _ := s.start(1, items[1:3], "copy of a slow transfer")

	deliver := func(si int, it *item) {
		s.settle(si, it)
		if !it.done {
			s.markDone(it)
		}
	}
	deliver(0, items[0])
	deliver(1, items[1]) // the copy wins the race for item 1 ...
	deliver(0, items[1]) // ... and the batch delivers it too
	deliver(1, items[2])
	deliver(0, items[2])
	if err := batch.ctx.Err(); err != nil {
		t.Fatalf("the batch was cancelled with items 3 and 4 still to come from it alone (open %d)", batch.open)
	}
	if copies.ctx.Err() == nil {
		t.Fatal("the copies' request stayed open after all its objects arrived")
	}
	deliver(0, items[3])
	deliver(0, items[4])
	if batch.ctx.Err() == nil || s.pending != 0 {
		t.Fatalf("after everything arrived: batch open %d, %d objects pending", batch.open, s.pending)
	}
	for si, st := range s.sources {
		if st.inflight != 0 {
			t.Errorf("source %d still counts %d bytes in flight", si, st.inflight)
		}
	}
}
