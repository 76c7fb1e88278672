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

// The chunks of large files are fetched striped across the files, so the
// workers fetching at once write into different files (writes into one
// file are serialised): two workers taking their first batches get the
// start of two files, and small whole files keep their path order.
func TestChunksAreFetchedStripedAcrossFiles(t *testing.T) {
	var items []*item
	add := func(gr *group) {
		items = append(items, &item{gr: gr, held: []bool{true}, tried: make([]bool, 1)})
	}
	const chunk = 128 << 10
	for _, name := range []string{"c", "a", "b"} { // 40 MiB each, listed out of order
		asm := &assembly{rel: name}
		for i := range 320 {
			add(&group{id: digest.Of([]byte(fmt.Sprint(name, i))), size: chunk, pieces: []piece{{asm: asm, off: int64(i) * chunk}}})
		}
	}
	for _, name := range []string{"z", "m"} {
		add(&group{id: digest.Of([]byte(name)), size: 100, paths: []string{name}})
	}
	orderItems(items)

	s := &scheduler{r: &restorer{opts: Options{PerSource: 2}}, flying: map[*item]bool{}}
	s.sources = []*sourceState{{batch: storeSource{}}}
	for _, it := range items {
		s.enqueue(0, it)
	}
	files := func(batch []*item) []string {
		var names []string
		for _, it := range batch {
			if n := it.gr.name(); len(names) == 0 || names[len(names)-1] != n {
				names = append(names, n)
			}
		}
		return names
	}
	first, second := files(s.take(0)), files(s.take(0))
	if fmt.Sprint(first) != "[a]" || fmt.Sprint(second) != "[b]" {
		t.Fatalf("the first two batches hold chunks of %v and %v, want the start of a and of b", first, second)
	}
	// Within a file the chunks come in offset order.
	var offs []int64
	for _, it := range items {
		if it.gr.name() == "a" {
			offs = append(offs, it.gr.pieces[0].off)
		}
	}
	for i := 1; i < len(offs); i++ {
		if offs[i] < offs[i-1] {
			t.Fatalf("chunks of a out of order: %d after %d", offs[i], offs[i-1])
		}
	}
	if items[0].gr.name() != "a" || items[len(items)-1].gr.name() != "c" {
		t.Fatalf("order starts with %s and ends with %s", items[0].gr.name(), items[len(items)-1].gr.name())
	}
}
