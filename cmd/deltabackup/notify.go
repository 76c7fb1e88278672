package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"
)

// Notifications (rohmu's notifiers) are posted in the background: a slow
// or failing endpoint never blocks or fails the command. At exit the
// command waits at most notifyDrain for deliveries still under way.
const (
	notifyAttempts = 3
	notifyTimeout  = 5 * time.Second
	notifyDrain    = 5 * time.Second
)

var notifyBackoff = time.Second

// notifier posts JSON events to a URL.
type notifier struct {
	url    string
	client *http.Client
	wg     sync.WaitGroup
}

// notify posts one event: {"event", "time", "host", "repository", ...fields}.
func (g *globals) notify(ctx context.Context, event string, fields map[string]any) {
	if g.notifyURL == "" {
		return
	}
	if g.notifier == nil {
		g.notifier = &notifier{url: g.notifyURL, client: &http.Client{Timeout: notifyTimeout}}
	}
	host, _ := os.Hostname()
	body := map[string]any{"event": event, "time": time.Now().UTC(), "host": host}
	if st := g.openedStore; st != nil {
		body["repository"] = st.Config().ID
	}
	for k, v := range fields {
		body[k] = v
	}
	data, err := json.Marshal(body)
	if err != nil {
		g.logger.Warn("notification not sent", "event", event, "err", err)
		return
	}
	n := g.notifier
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if err := n.post(context.WithoutCancel(ctx), data); err != nil {
			g.logger.Warn("notification not delivered", "event", event, "err", err)
		}
	}()
}

// notifyBackup posts the events of one backup run of src: backup_finished
// and objects_created when ok (s is then its summary), backup_failed with
// err otherwise.
func (g *globals) notifyBackup(ctx context.Context, src string, s *backupSummary, ok bool, err error) {
	if !ok {
		g.notify(ctx, "backup_failed", map[string]any{"source": src, "error": err.Error()})
		return
	}
	g.notify(ctx, "backup_finished", map[string]any{"backup": s.Name, "root_hash": s.RootHash, "files": s.Files,
		"total_bytes": s.TotalBytes, "uploaded_objects": s.UploadedObjects, "uploaded_bytes": s.UploadedBytes,
		"incomplete": len(s.Unreadable) + len(s.Changed), "duration_seconds": s.DurationSeconds})
	if s.UploadedObjects > 0 {
		g.notify(ctx, "objects_created", map[string]any{"backup": s.Name, "objects": s.UploadedObjects, "bytes": s.UploadedBytes})
	}
}

func (n *notifier) post(ctx context.Context, data []byte) error {
	var err error
	for attempt := 1; attempt <= notifyAttempts; attempt++ {
		if attempt > 1 {
			time.Sleep(notifyBackoff << (attempt - 2))
		}
		var req *http.Request
		req, err = http.NewRequestWithContext(ctx, http.MethodPost, n.url, bytes.NewReader(data))
		if err != nil {
			return err // a malformed URL does not get better
		}
		req.Header.Set("Content-Type", "application/json")
		var resp *http.Response
		resp, err = n.client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode < 300 {
				return nil
			}
			err = fmt.Errorf("endpoint answered %s", resp.Status)
			if resp.StatusCode < 500 && resp.StatusCode != http.StatusTooManyRequests {
				return err
			}
		}
	}
	return fmt.Errorf("after %d attempts: %w", notifyAttempts, err)
}

// drainNotifications waits a little for deliveries under way.
func (g *globals) drainNotifications() {
	if g.notifier == nil {
		return
	}
	done := make(chan struct{})
	go func() { g.notifier.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(notifyDrain):
		g.logger.Warn("notifications still undelivered at exit were dropped")
	}
}
