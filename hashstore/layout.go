package hashstore

import (
	"strings"
	"time"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// The repository layout: every key the store writes is built here, and
// every key it reads back from a listing is parsed here.
//
//	config                         repository config
//	objects/<hh>/<id>              a content of its own
//	packs/<hh>/<packid>            many small contents
//	index/<hh>/<indexid>           which pack holds which ids
//	backups/<name>.json            backup records
//	locks/<kind>/<time>-<id>.json  held locks
//	gc/<time>-<id>                 gc markers
//	gc/pending/<time>-<id>.json    pending deletions (gc's marks)
//	keys/<id>                      key files (encrypted repositories)
const (
	configKey     = "config"
	objectsPrefix = "objects/"
	packsPrefix   = "packs/"
	indexPrefix   = "index/"
	backupsPrefix = "backups/"
	locksPrefix   = "locks/"
	gcPrefix      = "gc/"
	pendingPrefix = gcPrefix + "pending/"
	keysPrefix    = "keys/"
)

// fanned is prefix, the first two hex digits of id, and id.
func fanned(prefix string, id digest.Digest) string {
	h := id.AppendHex(nil)
	b := make([]byte, 0, len(prefix)+3+len(h))
	b = append(b, prefix...)
	b = append(b, h[:2]...)
	b = append(b, '/')
	b = append(b, h...)
	return string(b)
}

// parseFanned reads a key fanned built, refusing any other spelling.
func parseFanned(prefix, key string) (digest.Digest, bool) {
	rest, ok := strings.CutPrefix(key, prefix)
	if !ok || len(rest) != 3+2*digest.Size || rest[2] != '/' || rest[:2] != rest[3:5] {
		return digest.Digest{}, false
	}
	id, err := digest.Parse(rest[3:])
	return id, err == nil
}

// ObjectKey returns the backend key of the loose object of content id:
// named by the id itself, or in an encrypted repository by its keyed
// name (see sealer).
func (s *Store) ObjectKey(id digest.Digest) string { return looseKey(s.seal.looseName(id)) }

// looseKey is the key of the loose object named name (sealer.looseName).
func looseKey(name digest.Digest) string { return fanned(objectsPrefix, name) }

// parseObjectKey returns the name of a loose object's key: its content
// id in an unencrypted repository, else what sealer.looseName made of it.
func parseObjectKey(key string) (digest.Digest, bool) { return parseFanned(objectsPrefix, key) }

func packKey(id digest.Digest) string { return fanned(packsPrefix, id) }

func parsePackKey(key string) (digest.Digest, bool) { return parseFanned(packsPrefix, key) }

func indexKey(id digest.Digest) string { return fanned(indexPrefix, id) }

func parseIndexKey(key string) (digest.Digest, bool) { return parseFanned(indexPrefix, key) }

func backupKey(name string) string { return backupsPrefix + name + ".json" }

// parseBackupKey returns the record name of a key under backups/.
func parseBackupKey(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, backupsPrefix)
	if !ok {
		return "", false
	}
	return strings.CutSuffix(rest, ".json")
}

// lockKey names a lock file: the kind is part of the key, so the
// exclusive locks can be listed without reading every shared one.
func lockKey(kind LockKind, created time.Time, id string) string {
	return locksPrefix + string(kind) + "/" + created.Format("20060102T150405Z") + "-" + id + ".json"
}

func gcMarkerKey(started time.Time, id string) string {
	return gcPrefix + started.Format("20060102T150405.000000000Z") + "-" + id
}

func pendingKey(marked time.Time, id string) string {
	return pendingPrefix + marked.Format("20060102T150405.000000000Z") + "-" + id + ".json"
}
