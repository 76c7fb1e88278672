package restore

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/snapshot/beneath"
)

// ownerMap turns recorded owners into this machine's numbers: by name
// where the name exists here (another machine may number its users
// differently), else by the recorded number.
type ownerMap struct {
	numeric bool
	mu      sync.Mutex
	users   map[string]int
	groups  map[string]int
}

func newOwnerMap(numeric bool) *ownerMap {
	return &ownerMap{numeric: numeric, users: map[string]int{}, groups: map[string]int{}}
}

func (o *ownerMap) ids(n *snapshot.Node) (uid, gid int) {
	uid, gid = int(n.UID), int(n.GID)
	if o.numeric {
		return uid, gid
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if n.User != "" {
		id, ok := o.users[n.User]
		if !ok {
			id = -1
			if u, err := user.Lookup(n.User); err == nil {
				if v, err := strconv.Atoi(u.Uid); err == nil {
					id = v
				}
			}
			o.users[n.User] = id
		}
		if id >= 0 {
			uid = id
		}
	}
	if n.Group != "" {
		id, ok := o.groups[n.Group]
		if !ok {
			id = -1
			if g, err := user.LookupGroup(n.Group); err == nil {
				if v, err := strconv.Atoi(g.Gid); err == nil {
					id = v
				}
			}
			o.groups[n.Group] = id
		}
		if id >= 0 {
			gid = id
		}
	}
	return uid, gid
}

// metaTarget is an entry whose metadata is set: an open file, or an entry
// of a directory handle (name "." for the directory itself).
type metaTarget struct {
	file *os.File
	dir  *beneath.Dir
	name string
	link bool // a symbolic link: no mode, only trusted/security xattrs
}

func (m metaTarget) chown(uid, gid int) error {
	if m.file != nil {
		return m.file.Chown(uid, gid)
	}
	if m.name == "." {
		return unix.Fchown(m.dir.Fd(), uid, gid)
	}
	return m.dir.Lchown(m.name, uid, gid)
}

func (m metaTarget) setXattr(attr string, value []byte) error {
	if m.file != nil {
		return unix.Fsetxattr(int(m.file.Fd()), attr, value, 0)
	}
	if m.name == "." {
		return unix.Fsetxattr(m.dir.Fd(), attr, value, 0)
	}
	return m.dir.SetXattr(m.name, attr, value)
}

func (m metaTarget) chmod(mode uint32) error {
	if m.file != nil {
		return m.file.Chmod(fileMode(mode))
	}
	if m.name == "." {
		return unix.Fchmod(m.dir.Fd(), mode)
	}
	return m.dir.Chmod(m.name, mode)
}

func (m metaTarget) chtimes(mtimeNs int64) error {
	if m.file != nil {
		return beneath.SetTimes(m.file, mtimeNs)
	}
	if m.name == "." {
		ts := []unix.Timespec{unix.NsecToTimespec(mtimeNs), unix.NsecToTimespec(mtimeNs)}
		return unix.UtimesNanoAt(m.dir.Fd(), ".", ts, 0)
	}
	return m.dir.Chtimes(m.name, mtimeNs)
}

// setMetadata puts an entry's owner, extended attributes, mode and mtime
// back, in that order: chown clears setuid and setgid, and setting an ACL
// sets the group bits. setuid and setgid are restored only together with
// the recorded owner (a user's setuid file restored by root must not
// become a setuid root program). What cannot be set is a warning, except
// the mode and mtime, whose failure is returned.
func (r *restorer) setMetadata(m metaTarget, rel string, n *snapshot.Node) error {
	uid, gid := r.owners.ids(n)
	ownerRestored := false
	if r.asRoot {
		if err := m.chown(uid, gid); err != nil {
			r.warn(rel, "owner", err)
		} else {
			ownerRestored = true
		}
	} else {
		ownerRestored = uid == geteuid() && gid == os.Getegid()
	}
	for _, x := range n.Xattrs {
		if m.link && strings.HasPrefix(x.Name, "user.") {
			continue // Linux allows no user.* attributes on symbolic links
		}
		if err := m.setXattr(x.Name, x.Value); err != nil {
			r.warn(rel, "extended attribute "+x.Name, err)
		}
	}
	if !m.link {
		mode := n.Mode
		if !ownerRestored {
			mode &^= 0o6000
		}
		if err := m.chmod(mode); err != nil {
			return fmt.Errorf("mode: %w", err)
		}
	}
	if err := m.chtimes(n.MtimeNs); err != nil {
		if m.link && errors.Is(err, unix.EOPNOTSUPP) {
			return nil
		}
		return fmt.Errorf("mtime: %w", err)
	}
	return nil
}

// fileMode converts Unix permission bits, with setuid, setgid and sticky,
// to an os.FileMode.
func fileMode(unix uint32) os.FileMode {
	m := os.FileMode(unix & 0o777)
	if unix&0o4000 != 0 {
		m |= os.ModeSetuid
	}
	if unix&0o2000 != 0 {
		m |= os.ModeSetgid
	}
	if unix&0o1000 != 0 {
		m |= os.ModeSticky
	}
	return m
}
