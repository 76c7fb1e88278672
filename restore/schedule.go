package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// The scheduler runs the downloads of a restore. Every source has a queue,
// filled by the plan, and its own workers (at most PerSource at once).
// A worker takes from its own queue. When that is empty, it takes queued
// work over from the source expected to finish last, as much as evens out
// the expected finishing times (bytes left over each source's measured
// rate). When nothing is queued anywhere, it fetches a copy of an object
// another source is fetching, if it expects to deliver it in less than
// half the time; the first copy to arrive wins and the other is dropped.
// A source that keeps failing is dropped and its work goes to the others.
// So a slow source slows no one, a dead one stops no one, and an object
// fails only when no source that holds it can deliver it.

// sourceFailures is how many failed requests in a row drop a source.
const sourceFailures = 3

// speculateAfter is how long an object must have been in flight before a
// copy is considered; speculateLatency is added to the time a copy is
// expected to take, for the request itself.
const (
	speculateAfter   = 100 * time.Millisecond
	speculateLatency = 20 * time.Millisecond
)

// stealBytes bounds what one take-over moves: small enough that work
// shifts gradually, large enough that a batch of small objects is one
// request.
const stealBytes = 1 << 20

// rateWarmup: a source's rate is not judged before it has been fetching
// this long.
const rateWarmup = 50 * time.Millisecond

type item struct {
	gr       *group
	held     []bool // sources that hold it, per the plan
	tried    []bool // sources that failed to deliver it (and may not retry)
	retried  []bool // sources given a second try, having been the last hope
	errs     []error
	done     bool
	attempts []*attempt
}

type attempt struct {
	source  int
	started time.Time
	req     *request
	got     atomic.Int64 // bytes received so far
	// through is the size of this object and of those before it in its
	// request: objects arrive in request order.
	through int64
	closed  bool
}

// request is one download call of a worker: one object, or a batch.
// It is cancelled once none of its objects is still wanted from it.
type request struct {
	ctx     context.Context
	cancel  context.CancelFunc
	src     *sourceState
	open    int // its objects not yet delivered, by it or another source
	objects int
	got     atomic.Int64
	failed  bool // counted as one failure of its source, however many objects it carried
}

// settle ends si's attempt on it and returns its request, and whether the
// scheduler had cancelled it (so a failure is not the source's fault).
// Called with s.mu held.
func (s *scheduler) settle(si int, it *item) (req *request, cancelled bool) {
	st := s.sources[si]
	for k, a := range it.attempts {
		if a.source == si {
			it.attempts = append(it.attempts[:k], it.attempts[k+1:]...)
			st.inflight -= it.gr.size
			st.settled += a.got.Load()
			cancelled = a.req.ctx.Err() != nil
			a.close()
			return a.req, cancelled
		}
	}
	return &request{}, false
}

// markDone records that it arrived; other attempts on it are no longer
// needed. Called with s.mu held.
func (s *scheduler) markDone(it *item) {
	it.done = true
	delete(s.flying, it)
	s.pending--
	for _, a := range it.attempts {
		a.close()
	}
}

// close marks the attempt as no longer needed, once: a request whose
// objects all arrived, from it or elsewhere, is cancelled, and a batch goes
// on while it still carries objects nobody else delivered.
func (a *attempt) close() {
	if a.closed {
		return
	}
	a.closed = true
	if a.req.open--; a.req.open == 0 {
		a.req.cancel()
	}
}

// countingReader counts what an attempt, its request and its source have
// received.
type countingReader struct {
	r io.Reader
	a *attempt
}

// Verifies passes on what the source's reader checks (hashstore.Verifying).
func (c countingReader) Verifies() (digest.Digest, int64) {
	if v, ok := c.r.(hashstore.Verifying); ok {
		return v.Verifies()
	}
	return digest.Digest{}, -1
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if c.a != nil {
		c.a.got.Add(int64(n))
		c.a.req.got.Add(int64(n))
		c.a.req.src.live.Add(int64(n))
	}
	return n, err
}

type sourceState struct {
	src      Source
	batch    BatchSource // nil when the source cannot batch
	queue    []*item
	queued   int64 // bytes in queue
	failed   bool
	failures int // in a row

	// For the estimates: when the source first fetched, what it has
	// received in all, what of that belongs to attempts that ended, and
	// the sizes of the objects it is fetching now.
	started  time.Time
	live     atomic.Int64
	settled  int64
	inflight int64

	// nextStragglerScan spaces out the idle workers' scans of what is in
	// flight: completions wake them far more often than needed.
	nextStragglerScan time.Time
}

// rate is the bytes per second the source has delivered, all its workers
// together, or 0 when it is too early to say.
func (s *sourceState) rate(now time.Time) float64 {
	if s.started.IsZero() || now.Sub(s.started) < rateWarmup {
		return 0
	}
	return float64(s.live.Load()) / now.Sub(s.started).Seconds()
}

// left is the bytes the source still has to deliver: its queue and the
// rest of what it is fetching.
func (s *sourceState) left() int64 {
	return max(s.queued+s.inflight-(s.live.Load()-s.settled), 0)
}

type scheduler struct {
	r       *restorer
	plan    *Plan
	ctx     context.Context
	mu      sync.Mutex
	cond    *sync.Cond
	sources []*sourceState
	pending int
	flying  map[*item]bool
}

func (r *restorer) writeFiles(ctx context.Context, plan *Plan, groups map[digest.Digest]*group) error {
	if len(groups) == 0 {
		return nil
	}
	s := &scheduler{r: r, plan: plan, ctx: ctx, flying: map[*item]bool{}}
	s.cond = sync.NewCond(&s.mu)
	for _, src := range plan.Sources {
		st := &sourceState{src: src}
		st.batch, _ = src.(BatchSource)
		s.sources = append(s.sources, st)
	}
	items := make([]*item, 0, len(groups))
	for _, gr := range groups {
		n := len(plan.Sources)
		it := &item{gr: gr, held: make([]bool, n), tried: make([]bool, n), retried: make([]bool, n)}
		for _, h := range plan.Holders[gr.id] {
			it.held[h] = true
		}
		items = append(items, it)
	}
	orderItems(items)
	for _, it := range items {
		s.enqueue(plan.Holders[it.gr.id][0], it)
	}
	s.pending = len(items)

	stop := make(chan struct{})
	go func() { // wakes idle workers so they can look for stragglers
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				s.cond.Broadcast()
			}
		}
	}()
	defer close(stop)
	var wg sync.WaitGroup
	for si := range s.sources {
		for range r.opts.PerSource {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.work(si)
			}()
		}
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	s.giveUpRest()
	return nil
}

// orderItems puts large objects first, so none starts last and runs
// alone, and small ones in path order, so neighbours in a pack are read
// together, with the chunks of large files striped across the files
// (group.stripe).
func orderItems(items []*item) {
	sort.Slice(items, func(i, j int) bool {
		a, b := items[i].gr, items[j].gr
		if (a.size > batchObjectMax) != (b.size > batchObjectMax) {
			return a.size > batchObjectMax
		}
		if a.size > batchObjectMax {
			return a.size > b.size
		}
		sa, oa := a.stripe()
		sb, ob := b.stripe()
		if sa != sb {
			return sa < sb
		}
		if na, nb := a.name(), b.name(); na != nb {
			return na < nb
		}
		return oa < ob
	})
}

func (s *scheduler) enqueue(si int, it *item) {
	st := s.sources[si]
	st.queue = append(st.queue, it)
	st.queued += it.gr.size
}

// work is one worker of source si.
func (s *scheduler) work(si int) {
	for {
		req, items := s.next(si)
		if items == nil {
			return
		}
		s.fetch(si, req, items)
	}
}

// next returns the items worker si should fetch now, or nil when there
// is nothing left for it.
func (s *scheduler) next(si int) (*request, []*item) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.sources[si]
	for {
		if s.pending == 0 || st.failed || s.ctx.Err() != nil {
			s.cond.Broadcast()
			return nil, nil
		}
		if items := s.take(si); items != nil {
			return s.start(si, items, "planned")
		}
		if victim, move, maxItem := s.victim(si); victim >= 0 {
			if items := s.takeOver(si, victim, move, maxItem); items != nil {
				return s.start(si, items, "taken over from "+s.sources[victim].src.String())
			}
		}
		if items := s.stragglers(si); items != nil {
			return s.start(si, items, "copy of a slow transfer")
		}
		if !s.anyWorkFor(si) {
			return nil, nil // nothing queued or in flight that this source holds
		}
		s.cond.Wait()
	}
}

// take removes the head of si's queue for one of its workers: a batch of
// small objects when si can batch, else one object. A worker takes its
// share of the queue, so the source's other workers have work too.
func (s *scheduler) take(si int) []*item {
	st := s.sources[si]
	limit := min(max(st.queued/int64(s.r.opts.PerSource), stealBytes), batchBytes)
	n := 0
	var bytes int64
	for n < len(st.queue) {
		it := st.queue[n]
		if it.tried[si] {
			break // requeued after a failure elsewhere; never, in practice
		}
		small := it.gr.size <= batchObjectMax
		if n > 0 && (!small || n >= batchObjects || bytes >= limit) {
			break
		}
		n++
		bytes += it.gr.size
		if st.batch == nil || !small {
			break
		}
	}
	if n == 0 {
		return nil
	}
	out := append([]*item(nil), st.queue[:n]...)
	clear(st.queue[:n])
	st.queue = st.queue[n:]
	st.queued -= bytes
	return out
}

// takeOver removes queued objects of source from, that si holds, from the
// tail of its queue (the head is what from works on next): up to move
// bytes, none larger than maxItem, as a batch when si can batch.
func (s *scheduler) takeOver(si, from int, move, maxItem int64) []*item {
	q := s.sources[from]
	batch := s.sources[si].batch != nil
	limit := min(move, stealBytes)
	var picked []int
	var bytes int64
	for k := len(q.queue) - 1; k >= 0 && len(q.queue)-k <= 2*batchObjects; k-- {
		it := q.queue[k]
		if it.tried[si] || !it.held[si] || it.gr.size > maxItem {
			continue
		}
		small := it.gr.size <= batchObjectMax
		if len(picked) > 0 && (!small || len(picked) >= batchObjects || bytes+it.gr.size > limit) {
			break
		}
		picked = append(picked, k)
		bytes += it.gr.size
		if !batch || !small {
			break
		}
	}
	if len(picked) == 0 {
		return nil
	}
	out := make([]*item, len(picked))
	drop := make(map[int]bool, len(picked))
	for i, k := range picked {
		out[i] = q.queue[k]
		drop[k] = true
		q.queued -= q.queue[k].gr.size
	}
	kept := q.queue[:0]
	for k, it := range q.queue {
		if !drop[k] {
			kept = append(kept, it)
		}
	}
	clear(q.queue[len(kept):])
	q.queue = kept
	return out
}

// victim is the other source whose queue si should take work from: the
// one expected to finish last, if si would finish before it. It returns
// the bytes to move so both would finish together, and the largest object
// worth moving (one that still ends before the victim would), or -1.
func (s *scheduler) victim(si int) (int, int64, int64) {
	now := time.Now()
	thief := s.sources[si]
	best, bestFinish := -1, 0.0
	var bestMove, bestMax int64
	for vi, v := range s.sources {
		if vi == si || v.queued == 0 || v.failed {
			continue
		}
		// Expected finishing times need both rates; without them, bytes
		// left are compared as if the sources were equally fast.
		rT, rV := thief.rate(now), v.rate(now)
		if rT == 0 || rV == 0 {
			rT, rV = 1, 1
		}
		lT, lV := float64(thief.left()), float64(v.left())
		finish := lV / rV
		if finish <= bestFinish {
			continue
		}
		move := (lV*rT - lT*rV) / (rT + rV)
		if move <= 0 {
			continue
		}
		holds := false
		for k := len(v.queue) - 1; k >= 0 && len(v.queue)-k <= 2*batchObjects; k-- {
			if it := v.queue[k]; !it.tried[si] && it.held[si] {
				holds = true
				break
			}
		}
		if holds {
			best, bestFinish = vi, finish
			bestMove, bestMax = int64(move), int64(move*(rT+rV)/rV)
		}
	}
	return best, bestMove, bestMax
}

// stragglers are objects other sources are fetching that si would likely
// deliver in less than half the time they still need: the one it would
// gain most on, and for a source that batches, more small ones while that
// still holds. Nil when there are none.
func (s *scheduler) stragglers(si int) []*item {
	now := time.Now()
	st := s.sources[si]
	if now.Before(st.nextStragglerScan) {
		return nil
	}
	// Without a rate of its own, a source is assumed as fast as the
	// fastest one; with no rate anywhere there is nothing to judge by.
	mine := st.rate(now)
	if mine == 0 {
		for _, o := range s.sources {
			mine = max(mine, o.rate(now))
		}
	}
	if mine == 0 {
		return nil
	}
	busy := float64(st.left())
	myTime := func(bytes int64) time.Duration {
		return time.Duration((busy+float64(bytes))/mine*float64(time.Second)) + speculateLatency
	}
	type candidate struct {
		it        *item
		theirLeft time.Duration
	}
	var found []candidate
	for it := range s.flying {
		if len(it.attempts) != 1 {
			continue
		}
		a := it.attempts[0]
		elapsed := now.Sub(a.started)
		if a.source == si || elapsed < speculateAfter || it.done || it.tried[si] || !it.held[si] {
			continue
		}
		// The object arrives once its request has received what comes
		// before it, at the rate the request has had so far. Nothing
		// received yet (a stalled request): assume it needs as long again.
		theirLeft := elapsed
		if got := a.req.got.Load(); got > 0 {
			theirLeft = time.Duration(float64(a.through-got) / float64(got) * float64(elapsed))
		}
		if theirLeft >= 2*myTime(it.gr.size) {
			found = append(found, candidate{it, theirLeft})
		}
	}
	if len(found) == 0 {
		// Idle workers come here on every wake-up while much is in
		// flight: look again a little later.
		st.nextStragglerScan = now.Add(speculateAfter / 4)
		return nil
	}
	sort.Slice(found, func(i, j int) bool { return found[i].theirLeft > found[j].theirLeft })
	out := []*item{found[0].it}
	if st.batch == nil || found[0].it.gr.size > batchObjectMax {
		return out
	}
	bytes := found[0].it.gr.size
	for _, c := range found[1:] {
		if len(out) >= batchObjects || bytes >= stealBytes {
			break
		}
		if c.it.gr.size <= batchObjectMax && c.theirLeft >= 2*myTime(bytes+c.it.gr.size) {
			out = append(out, c.it)
			bytes += c.it.gr.size
		}
	}
	return out
}

// anyWorkFor reports whether anything queued or in flight could still
// come to si.
func (s *scheduler) anyWorkFor(si int) bool {
	for _, v := range s.sources {
		for _, it := range v.queue {
			if !it.tried[si] && it.held[si] {
				return true
			}
		}
	}
	for it := range s.flying {
		if !it.done && !it.tried[si] && it.held[si] {
			return true
		}
	}
	return false
}

// start records attempts of si on items, made by one request. Called with
// s.mu held.
func (s *scheduler) start(si int, items []*item, why string) (*request, []*item) {
	if s.r.logger.Enabled(s.ctx, slog.LevelDebug) {
		var bytes int64
		for _, it := range items {
			bytes += it.gr.size
		}
		s.r.logger.Debug("download", "source", s.sources[si].src.String(), "objects", len(items), "bytes", bytes, "why", why)
	}
	ctx, cancel := context.WithCancel(s.ctx)
	st := s.sources[si]
	req := &request{ctx: ctx, cancel: cancel, src: st, open: len(items), objects: len(items)}
	now := time.Now()
	if st.started.IsZero() {
		st.started = now
	}
	var through int64
	for _, it := range items {
		through += it.gr.size
		st.inflight += it.gr.size
		it.attempts = append(it.attempts, &attempt{source: si, started: now, req: req, through: through})
		s.flying[it] = true
	}
	return req, items
}

// fetch downloads items from source si and finishes or reassigns each.
func (s *scheduler) fetch(si int, req *request, items []*item) {
	st := s.sources[si]
	ctx := req.ctx
	defer req.cancel()
	if len(items) == 1 && (st.batch == nil || items[0].gr.size > batchObjectMax) {
		it := items[0]
		var got landing
		rc, err := st.src.Get(ctx, it.gr.id)
		if err == nil {
			got, err = s.r.land(ctx, countingReader{rc, s.progressOf(si, it)}, it.gr)
			rc.Close()
		}
		s.complete(si, it, got, err)
		return
	}
	byHash := make(map[digest.Digest]*item, len(items))
	ids := make([]digest.Digest, len(items))
	for i, it := range items {
		byHash[it.gr.id] = it
		ids[i] = it.gr.id
	}
	err := st.batch.GetMany(ctx, ids, func(h digest.Digest, rd io.Reader, err error) error {
		it := byHash[h]
		if it == nil {
			return nil
		}
		delete(byHash, h)
		var got landing
		if err == nil {
			got, err = s.r.land(ctx, countingReader{rd, s.progressOf(si, it)}, it.gr)
		}
		s.complete(si, it, got, err)
		return nil
	})
	if err == nil {
		err = errors.New("the source did not answer for it")
	}
	for _, it := range byHash { // never handed to fn
		s.complete(si, it, landing{}, err)
	}
}

// progressOf is si's attempt on it, to count what it receives.
func (s *scheduler) progressOf(si int, it *item) *attempt {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range it.attempts {
		if a.source == si {
			return a
		}
	}
	return nil // settled meanwhile; nobody will look
}

// complete settles one attempt of si on it.
func (s *scheduler) complete(si int, it *item, got landing, err error) {
	s.mu.Lock()
	st := s.sources[si]
	req, cancelled := s.settle(si, it)
	if err == nil {
		if it.done { // another source was faster
			s.mu.Unlock()
			got.drop()
			return
		}
		s.markDone(it)
		st.failures = 0
		s.cond.Broadcast()
		s.mu.Unlock()
		s.r.perSrc[si].Add(it.gr.size)
		s.r.finishGroup(it.gr, got)
		return
	}
	defer s.mu.Unlock()
	defer s.cond.Broadcast()
	if it.done || s.ctx.Err() != nil {
		return // cancelled because a copy arrived, or the restore stops
	}
	if cancelled {
		if len(it.attempts) == 0 {
			s.reassign(it)
		}
		return
	}
	var target *TargetError
	if errors.As(err, &target) {
		// The target, not the source, failed: another source would fare
		// no better, and a full target stops the restore.
		if !s.r.targetFull(target.Path, err) {
			s.failAtTarget(it, err)
		}
		return
	}
	it.tried[si] = true
	it.errs = append(it.errs, fmt.Errorf("from %s: %w", st.src, err))
	s.r.logger.Debug("download failed", "object", it.gr.id, "source", st.src.String(), "err", err)
	if !req.failed && !st.failed {
		// One broken batch is one failure, and one warning.
		req.failed = true
		st.failures++
		s.r.logger.Warn("download failed; its objects go to other sources", "source", st.src.String(), "objects", req.objects, "err", err)
	}
	if st.failures >= sourceFailures && !st.failed {
		st.failed = true
		s.r.logger.Warn("source dropped after failing repeatedly; its work moves to the others", "source", st.src.String(), "err", err)
		for _, q := range st.queue {
			q.tried[si] = true
			// Why the source was dropped is why it did not deliver these.
			q.errs = append(q.errs, fmt.Errorf("from %s, dropped after failing repeatedly: %w", st.src, err))
			s.reassign(q)
		}
		st.queue, st.queued = nil, 0
	}
	if len(it.attempts) > 0 {
		return // another copy is still coming
	}
	s.reassign(it)
}

// reassign queues it at the least-loaded source that holds it and has not
// failed it, or fails its files when there is none. Called with s.mu held.
func (s *scheduler) reassign(it *item) {
	best := -1
	for _, h := range s.plan.Holders[it.gr.id] {
		if it.tried[h] || s.sources[h].failed {
			continue
		}
		if best < 0 || s.sources[h].queued < s.sources[best].queued {
			best = h
		}
	}
	if best < 0 {
		// Every holder failed it once: a source still in service gets a
		// second try, since one broken connection is no verdict on an
		// object only it holds.
		for _, h := range s.plan.Holders[it.gr.id] {
			if !it.retried[h] && !s.sources[h].failed {
				it.retried[h], it.tried[h] = true, false
				best = h
				break
			}
		}
	}
	if best >= 0 {
		s.enqueue(best, it)
		return
	}
	s.giveUp(it)
}

func (s *scheduler) giveUp(it *item) {
	if it.done {
		return
	}
	it.done = true
	delete(s.flying, it)
	s.pending--
	var where []string
	for _, h := range s.plan.Holders[it.gr.id] {
		where = append(where, s.sources[h].src.String())
	}
	reason := errors.Join(it.errs...)
	if reason == nil {
		reason = errors.New("every source holding it was dropped after failing")
	}
	err := fmt.Errorf("object %s could not be fetched (held by %s): %w", it.gr.id, strings.Join(where, ", "), reason)
	s.r.failGroup(it.gr, err)
}

// failAtTarget fails the files of it because the target refused them.
// Called with s.mu held.
func (s *scheduler) failAtTarget(it *item, err error) {
	if it.done {
		return
	}
	it.done = true
	delete(s.flying, it)
	s.pending--
	s.r.failGroup(it.gr, err)
}

// giveUpRest fails whatever is left once every worker has stopped: items
// whose only holders failed.
func (s *scheduler) giveUpRest() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range s.sources {
		for _, it := range st.queue {
			s.giveUp(it)
		}
		st.queue = nil
	}
	for it := range s.flying {
		s.giveUp(it)
	}
}
