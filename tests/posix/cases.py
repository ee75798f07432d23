#!/usr/bin/env python3
"""POSIX cases for a mounted file system, each with the errno POSIX (as Linux implements it)
requires.

Usage: cases.py <directory on the mount> [longest file name in bytes, 255 unless given]

Run as root. Each operation runs in a child process with the ids of the case's user (setgroups,
setgid, setuid, umask 0) and a deadline, so a hung mount shows as "hung" instead of hanging the
suite. Prints one JSON line per check: {"case", "check", "want", "got"}, and a summary line
{"summary": {"passed", "failed"}}. The categories follow pjdfstest's: chmod, chown, mkdir, open,
unlink, rmdir, rename, symlink, link/mknod, truncate, utimensat, names.
"""

import ctypes
import errno
import json
import os
import stat
import sys
import time

BASE = sys.argv[1]
# A local bucket's objects are files named by the key's last part; its store writes each object
# to "<name>#1" first, so such a bucket holds file names of at most 253 bytes.
MAX_FILE_NAME = int(sys.argv[2]) if len(sys.argv) > 2 else 255
DEADLINE = 20.0
libc = ctypes.CDLL(None, use_errno=True)

ROOT = (0, 0, [])
ALICE = (1000, 1000, [])
ALICE_IN_3000 = (1000, 1000, [3000])
BOB = (2000, 2000, [])

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def check_call(result):
    if result != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def renameat2(src, dst, flags):
    check_call(libc.renameat2(AT_FDCWD, src.encode(), AT_FDCWD, dst.encode(), flags))


def utimensat(path, atime, mtime):
    """atime/mtime: (sec, nsec), or UTIME_NOW / UTIME_OMIT."""

    def ts(t):
        return Timespec(0, t) if isinstance(t, int) else Timespec(*t)

    times = (Timespec * 2)(ts(atime), ts(mtime))
    check_call(libc.utimensat(AT_FDCWD, path.encode(), times, 0))


def as_user(who, fn):
    """Runs fn in a child with who's ids; returns 0, an errno, "hung" or "error: ..."."""
    uid, gid, groups = who
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            os.umask(0)
            fn()
            out = "0"
        except OSError as e:
            out = str(e.errno)
        except BaseException as e:  # a mistake in the case itself
            out = "error: %r" % (e,)
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    start = time.monotonic()
    while True:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - start > DEADLINE:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            os.close(r)
            return "hung"
        time.sleep(0.002)
    out = os.read(r, 256).decode()
    os.close(r)
    return int(out) if out.lstrip("-").isdigit() else (out or "died")


def name_of(code):
    if isinstance(code, int):
        return "ok" if code == 0 else errno.errorcode.get(code, str(code))
    return code


passed = 0
failed = 0


class OneOf(tuple):
    """Errnos of which any is right (where Linux and POSIX differ)."""


def report(case, check, want, got):
    global passed, failed
    ok = got in want if isinstance(want, OneOf) else want == got
    if ok:
        passed += 1
    else:
        failed += 1
    print(json.dumps({"case": case, "check": check, "want": str(want), "got": str(got), "ok": ok}), flush=True)


class Case:
    def __init__(self, name):
        self.name = name
        self.dir = os.path.join(BASE, name)
        os.mkdir(self.dir)
        os.chmod(self.dir, 0o777)

    def p(self, *parts):
        return os.path.join(self.dir, *parts)

    def op(self, check, who, fn, want="ok"):
        """want: an errno name, "ok", or OneOf(names)."""
        report(self.name, check, want, name_of(as_user(who, fn)))

    def eq(self, check, got, want):
        report(self.name, check, want, got)

    def mode(self, *parts):
        try:
            return oct(stat.S_IMODE(os.lstat(self.p(*parts)).st_mode))
        except OSError as e:
            return name_of(e.errno)

    def owner(self, *parts):
        st = os.lstat(self.p(*parts))
        return (st.st_uid, st.st_gid)


def touch(path, mode=0o644):
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, mode))


def write(path, data, flags=0):
    fd = os.open(path, os.O_WRONLY | flags)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read(path):
    with open(path, "rb") as f:
        return f.read()


CASES = []


def case(fn):
    CASES.append(fn)
    return fn


@case
def chmod(c):
    f = c.p("f")
    c.op("owner creates", ALICE, lambda: touch(f, 0o644))
    c.op("owner chmods", ALICE, lambda: os.chmod(f, 0o600))
    c.eq("mode after chmod", c.mode("f"), "0o600")
    c.op("another user may not", BOB, lambda: os.chmod(f, 0o666), "EPERM")
    c.op("root may", ROOT, lambda: os.chmod(f, 0o640))
    c.eq("mode after root's chmod", c.mode("f"), "0o640")
    c.op("root gives the file group 3000", ROOT, lambda: os.chown(f, -1, 3000))
    c.op("set-group-ID by an owner outside the group", ALICE, lambda: os.chmod(f, 0o2755))
    c.eq("is dropped", c.mode("f"), "0o755")
    c.op("set-group-ID by an owner in the group", ALICE_IN_3000, lambda: os.chmod(f, 0o2755))
    c.eq("is kept", c.mode("f"), "0o2755")
    c.op("a missing file", ALICE, lambda: os.chmod(c.p("nope"), 0o644), "ENOENT")
    c.op("a file as a directory", ALICE, lambda: os.chmod(c.p("f", "x"), 0o644), "ENOTDIR")
    c.op("a name over 255 bytes", ALICE, lambda: os.chmod(c.p("n" * 256), 0o644), "ENAMETOOLONG")
    d = c.p("d")
    c.op("directory", ALICE, lambda: os.mkdir(d, 0o755))
    c.op("directory chmod", ALICE, lambda: os.chmod(d, 0o700))
    c.eq("directory mode", c.mode("d"), "0o700")


@case
def chown(c):
    f = c.p("f")
    c.op("owner creates", ALICE, lambda: touch(f))
    c.op("the owner may not give it away", ALICE, lambda: os.chown(f, 2000, -1), "EPERM")
    c.op("the owner keeps its uid", ALICE, lambda: os.chown(f, 1000, -1))
    c.op("another user may not", BOB, lambda: os.chown(f, 2000, 2000), "EPERM")
    c.op("the owner may not chgrp outside its groups", ALICE, lambda: os.chown(f, -1, 3000), "EPERM")
    c.op("the owner chgrps into its group", ALICE_IN_3000, lambda: os.chown(f, -1, 3000))
    c.eq("group changed", c.owner("f"), (1000, 3000))
    c.op("root gives it away", ROOT, lambda: os.chown(f, 2000, 2000))
    c.eq("owner changed", c.owner("f"), (2000, 2000))
    s = c.p("suid")
    c.op("root makes a set-user-ID file", ROOT, lambda: (touch(s, 0o755), os.chmod(s, 0o6755)))
    c.op("root chowns it", ROOT, lambda: os.chown(s, 1000, 1000))
    c.eq("set-user/group-ID dropped by chown", c.mode("suid"), "0o755")
    c.op("a missing file", ROOT, lambda: os.chown(c.p("nope"), 1, 1), "ENOENT")


@case
def mkdir(c):
    d = c.p("d")
    c.op("makes", ALICE, lambda: os.mkdir(d, 0o755))
    c.eq("mode", c.mode("d"), "0o755")
    c.eq("owner", c.owner("d"), (1000, 1000))
    c.op("exists", ALICE, lambda: os.mkdir(d, 0o755), "EEXIST")
    c.op("in a directory not writable", BOB, lambda: os.mkdir(c.p("d", "x"), 0o755), "EACCES")
    c.op("under a missing directory", ALICE, lambda: os.mkdir(c.p("nope", "x")), "ENOENT")
    c.op("name of 255 bytes", ALICE, lambda: os.mkdir(c.p("n" * 255)))
    c.op("name of 256 bytes", ALICE, lambda: os.mkdir(c.p("n" * 256)), "ENAMETOOLONG")
    g = c.p("sgid")
    c.op("a set-group-ID directory of group 3000", ROOT, lambda: (os.mkdir(g, 0o777), os.chown(g, 0, 3000), os.chmod(g, 0o2777)))
    c.op("a directory in it", ALICE, lambda: os.mkdir(os.path.join(g, "sub"), 0o755))
    c.eq("takes its group", c.owner("sgid", "sub"), (1000, 3000))
    c.eq("and its set-group-ID bit", c.mode("sgid", "sub"), "0o2755")
    c.op("a file in it", ALICE, lambda: touch(os.path.join(g, "file"), 0o644))
    c.eq("takes its group", c.owner("sgid", "file"), (1000, 3000))


@case
def open_(c):
    f = c.p("f")
    c.op("O_CREAT makes", ALICE, lambda: touch(f, 0o640))
    c.eq("mode", c.mode("f"), "0o640")
    c.op("O_EXCL on an existing file", ALICE, lambda: os.close(os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)), "EEXIST")
    c.op("reading without permission", BOB, lambda: os.close(os.open(f, os.O_RDONLY)), "EACCES")
    c.op("writing without permission", BOB, lambda: os.close(os.open(f, os.O_WRONLY)), "EACCES")
    c.op("O_TRUNC without write permission", BOB, lambda: os.close(os.open(f, os.O_RDONLY | os.O_TRUNC)), "EACCES")
    c.op("a directory for writing", ALICE, lambda: os.close(os.open(c.dir, os.O_WRONLY)), "EISDIR")
    c.op("a missing file", ALICE, lambda: os.close(os.open(c.p("nope"), os.O_RDONLY)), "ENOENT")
    c.op("alice's directory", ALICE, lambda: os.mkdir(c.p("ro"), 0o755))
    c.op("O_CREAT in a directory not writable", BOB, lambda: touch(c.p("ro", "x")), "EACCES")
    s = c.p("suid")
    c.op("a 0777 set-user-ID file", ROOT, lambda: (touch(s, 0o777), os.chown(s, 1000, 1000), os.chmod(s, 0o4777)))
    c.op("written by another user", BOB, lambda: write(s, b"x"))
    c.eq("loses set-user-ID", c.mode("suid"), "0o777")
    c.op("O_TRUNC empties", ALICE, lambda: (write(f, b"hello"), write(f, b"", os.O_TRUNC)))
    c.eq("size after O_TRUNC", os.stat(f).st_size, 0)
    c.op("O_APPEND appends", ALICE, lambda: (write(f, b"ab"), write(f, b"cd", os.O_APPEND)))
    c.eq("content", read(f), b"abcd")


@case
def unlink(c):
    f = c.p("f")
    c.op("owner creates", ALICE, lambda: touch(f))
    c.op("unlinks", ALICE, lambda: os.unlink(f))
    c.op("gone", ALICE, lambda: os.stat(f), "ENOENT")
    c.op("a missing file", ALICE, lambda: os.unlink(f), "ENOENT")
    c.op("a directory", ALICE, lambda: (os.mkdir(c.p("d"), 0o755), os.unlink(c.p("d"))), "EISDIR")
    c.op("a file in alice's directory", ALICE, lambda: touch(c.p("d", "x")))
    c.op("another user may not", BOB, lambda: os.unlink(c.p("d", "x")), "EACCES")
    c.op("nor alice once it is not writable", ALICE, lambda: (os.chmod(c.p("d"), 0o555), os.unlink(c.p("d", "x"))), "EACCES")
    t = c.p("tmp")
    c.op("a sticky directory", ROOT, lambda: (os.mkdir(t), os.chmod(t, 0o1777)))
    c.op("alice's file in it", ALICE, lambda: touch(os.path.join(t, "a")))
    c.op("bob may not remove it", BOB, lambda: os.unlink(os.path.join(t, "a")), "EPERM")
    c.op("root may", ROOT, lambda: (touch(os.path.join(t, "r")), os.unlink(os.path.join(t, "r"))))
    c.op("alice may", ALICE, lambda: os.unlink(os.path.join(t, "a")))
    o = c.p("open")
    c.op("a file unlinked while open reads on", ALICE, lambda: unlink_while_open(o))


def unlink_while_open(path):
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    os.write(fd, b"data")
    os.unlink(path)
    os.close(fd)
    if os.path.exists(path):
        raise OSError(errno.EEXIST, "still there")


@case
def rmdir(c):
    d = c.p("d")
    c.op("makes", ALICE, lambda: (os.mkdir(d), touch(os.path.join(d, "f"))))
    c.op("not empty", ALICE, lambda: os.rmdir(d), "ENOTEMPTY")
    c.op("a file", ALICE, lambda: os.rmdir(os.path.join(d, "f")), "ENOTDIR")
    c.op("empties and removes", ALICE, lambda: (os.unlink(os.path.join(d, "f")), os.rmdir(d)))
    c.op("gone", ALICE, lambda: os.stat(d), "ENOENT")
    c.op("a missing directory", ALICE, lambda: os.rmdir(d), "ENOENT")
    t = c.p("tmp")
    c.op("a sticky directory", ROOT, lambda: (os.mkdir(t), os.chmod(t, 0o1777)))
    c.op("alice's directory in it", ALICE, lambda: os.mkdir(os.path.join(t, "a")))
    c.op("bob may not remove it", BOB, lambda: os.rmdir(os.path.join(t, "a")), "EPERM")
    c.op("alice may", ALICE, lambda: os.rmdir(os.path.join(t, "a")))
    c.op("alice's empty directory", ALICE, lambda: os.mkdir(c.p("b"), 0o755))
    c.op("removed by another user from a writable parent", BOB, lambda: os.rmdir(c.p("b")))


@case
def rename(c):
    a, b = c.p("a"), c.p("b")
    c.op("makes two files", ALICE, lambda: (write_new(a, b"A"), write_new(b, b"B")))
    c.op("onto an existing file", ALICE, lambda: os.rename(a, b))
    c.eq("replaced", read(b), b"A")
    c.op("the old name is gone", ALICE, lambda: os.stat(a), "ENOENT")
    c.op("to a new name", ALICE, lambda: os.rename(b, a))
    c.eq("content kept", read(a), b"A")
    d, e, full = c.p("d"), c.p("e"), c.p("full")
    c.op("directories", ALICE, lambda: (os.mkdir(d), touch(os.path.join(d, "x")), os.mkdir(e), os.mkdir(full), touch(os.path.join(full, "y"))))
    c.op("a directory onto a non-empty one", ALICE, lambda: os.rename(d, full), OneOf(("ENOTEMPTY", "EEXIST")))
    c.op("a file onto a directory", ALICE, lambda: os.rename(a, e), "EISDIR")
    c.op("a directory onto a file", ALICE, lambda: os.rename(d, a), "ENOTDIR")
    c.op("a directory into itself", ALICE, lambda: os.rename(d, os.path.join(d, "in")), "EINVAL")
    c.op("a directory onto an empty one", ALICE, lambda: os.rename(d, e))
    c.op("its content moved", ALICE, lambda: os.stat(os.path.join(e, "x")))
    c.op("a missing name", ALICE, lambda: os.rename(c.p("nope"), c.p("x")), "ENOENT")
    c.op("RENAME_NOREPLACE onto a file", ALICE, lambda: (write_new(b, b"B"), renameat2(a, b, RENAME_NOREPLACE)), "EEXIST")
    c.eq("target kept", read(b), b"B")
    c.op("RENAME_NOREPLACE to a free name", ALICE, lambda: renameat2(a, c.p("c"), RENAME_NOREPLACE))
    c.op("RENAME_EXCHANGE", ALICE, lambda: renameat2(b, c.p("c"), RENAME_EXCHANGE), "EINVAL")
    c.eq("nothing exchanged", read(b), b"B")
    t = c.p("tmp")
    c.op("a sticky directory", ROOT, lambda: (os.mkdir(t), os.chmod(t, 0o1777)))
    c.op("alice's file in it", ALICE, lambda: touch(os.path.join(t, "a")))
    c.op("bob may not rename it", BOB, lambda: os.rename(os.path.join(t, "a"), os.path.join(t, "b")), "EPERM")
    c.op("bob may not replace it", BOB, lambda: (touch(os.path.join(t, "bobs")), os.rename(os.path.join(t, "bobs"), os.path.join(t, "a"))), "EPERM")
    ro = c.p("ro")
    c.op("a directory not writable", ALICE, lambda: (os.mkdir(ro), touch(os.path.join(ro, "f")), os.chmod(ro, 0o555)))
    c.op("renaming out of it", ALICE, lambda: os.rename(os.path.join(ro, "f"), c.p("out")), "EACCES")
    c.op("renaming into it", ALICE, lambda: os.rename(b, os.path.join(ro, "in")), "EACCES")
    bobs = c.p("bobdir")
    c.op("bob's directory not writable by alice", BOB, lambda: (os.mkdir(bobs, 0o755)))
    c.op("alice moves it to another parent", ALICE, lambda: os.rename(bobs, os.path.join(e, "moved")), "EACCES")


def write_new(path, data):
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    os.write(fd, data)
    os.close(fd)


@case
def symlink(c):
    link = c.p("l")
    c.op("makes", ALICE, lambda: os.symlink("target/of/link", link))
    c.eq("reads back", os.readlink(link), "target/of/link")
    c.eq("is a link", stat.S_ISLNK(os.lstat(link).st_mode), True)
    c.op("exists", ALICE, lambda: os.symlink("x", link), "EEXIST")
    c.op("alice's directory", ALICE, lambda: os.mkdir(c.p("ro"), 0o755))
    c.op("in a directory not writable", BOB, lambda: os.symlink("x", c.p("ro", "l")), "EACCES")
    c.op("a target of 4,080 bytes", ALICE, lambda: os.symlink("t" * 4080, c.p("long")))
    c.op("a target of 4,081 bytes", ALICE, lambda: os.symlink("t" * 4081, c.p("longer")), "ENAMETOOLONG")
    c.op("followed", ALICE, lambda: (touch(c.p("real")), os.symlink("real", c.p("to-real")), os.stat(c.p("to-real"))))


@case
def nodes(c):
    c.op("a hard link", ALICE, lambda: (touch(c.p("f")), os.link(c.p("f"), c.p("g"))), "EPERM")
    c.op("a fifo", ALICE, lambda: os.mkfifo(c.p("fifo")), "EPERM")
    c.op("a character device", ROOT, lambda: os.mknod(c.p("dev"), 0o644 | stat.S_IFCHR, os.makedev(1, 3)), "EPERM")
    c.op("a regular file by mknod", ALICE, lambda: os.mknod(c.p("reg"), 0o600 | stat.S_IFREG))
    c.eq("mknod's file", c.mode("reg"), "0o600")


@case
def truncate(c):
    f = c.p("f")
    c.op("owner creates", ALICE, lambda: (write_new(f, b"hello world"), os.chmod(f, 0o644)))
    c.op("shrinks", ALICE, lambda: os.truncate(f, 5))
    c.eq("content", read(f), b"hello")
    c.op("grows with zeros", ALICE, lambda: os.truncate(f, 8))
    c.eq("content", read(f), b"hello\0\0\0")
    c.op("without write permission", BOB, lambda: os.truncate(f, 0), "EACCES")
    c.op("a directory", ALICE, lambda: os.truncate(c.dir, 0), "EISDIR")
    c.op("a missing file", ALICE, lambda: os.truncate(c.p("nope"), 0), "ENOENT")
    c.op("ftruncate on a descriptor for reading", ALICE, lambda: ftruncate(f, os.O_RDONLY, 0), OneOf(("EINVAL", "EBADF")))
    c.op("ftruncate on a descriptor for writing", ALICE, lambda: ftruncate(f, os.O_WRONLY, 2))
    c.eq("content", read(f), b"he")
    c.op("ftruncate of a 0444 file opened for writing before", ALICE, lambda: ftruncate_after_chmod(f))


def ftruncate(path, flags, size):
    fd = os.open(path, flags)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def ftruncate_after_chmod(path):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.chmod(path, 0o444)
        os.ftruncate(fd, 1)
    finally:
        os.close(fd)


@case
def utimensat_(c):
    f = c.p("f")
    c.op("owner creates", ALICE, lambda: (touch(f, 0o664)))
    c.op("owner sets both", ALICE, lambda: utimensat(f, (1000000000, 123456789), (1100000000, 987654321)))
    st = os.stat(f)
    c.eq("atime", (st.st_atime_ns), 1000000000123456789)
    c.eq("mtime", (st.st_mtime_ns), 1100000000987654321)
    c.op("UTIME_OMIT keeps atime", ALICE, lambda: utimensat(f, UTIME_OMIT, (1200000000, 0)))
    st = os.stat(f)
    c.eq("atime kept", st.st_atime_ns, 1000000000123456789)
    c.eq("mtime set", st.st_mtime_ns, 1200000000000000000)
    c.op("a group writer sets now", (2000, 1000, []), lambda: utimensat(f, UTIME_NOW, UTIME_NOW))
    c.eq("mtime is now", abs(os.stat(f).st_mtime - time.time()) < 120, True)
    c.op("a group writer sets a time", (2000, 1000, []), lambda: utimensat(f, (1, 0), (1, 0)), "EPERM")
    c.op("a stranger sets now", BOB, lambda: utimensat(f, UTIME_NOW, UTIME_NOW), "EACCES")
    c.op("a stranger sets a time", BOB, lambda: utimensat(f, (1, 0), (1, 0)), "EPERM")
    c.op("root sets a time", ROOT, lambda: utimensat(f, (5, 0), (6, 0)))
    c.eq("root's mtime", os.stat(f).st_mtime_ns, 6000000000)


NAMES = [
    "caf\u00e9", "cafe\u0301", "\u00fcber", "\u6587\u4ef6", "\U0001f600", "%", "100%25", "a?b",
    "#hash", "*", "<>", "[]", "{}", "|", "\\", "^", "~", "with space", "'quote\"",
]


@case
def names(c):
    for n in NAMES:
        c.op("create %r" % n, ALICE, lambda n=n: write_new(c.p(n), n.encode()))
    listed = set(os.listdir(c.dir))
    for n in NAMES:
        c.eq("listed as itself %r" % n, n in listed, True)
        c.eq("reads back %r" % n, read(c.p(n)) if n in listed else None, n.encode())
    for n in ["tab\there", "new\nline", "bell\x07"]:
        c.op("control character %r" % n, ALICE, lambda n=n: write_new(c.p(n), b"x"), "EINVAL")
    longest, chars = MAX_FILE_NAME, MAX_FILE_NAME // 3
    c.op("the longest file name", ALICE, lambda: write_new(c.p("x" * longest), b"x"))
    c.op("one byte more", ALICE, lambda: write_new(c.p("x" * (longest + 1)), b"x"), "ENAMETOOLONG")
    c.op("a 256-byte name", ALICE, lambda: os.mkdir(c.p("x" * 256)), "ENAMETOOLONG")
    c.op("a 255-byte directory name", ALICE, lambda: os.mkdir(c.p("y" * 255)))
    c.op("the longest name of 3-byte characters", ALICE, lambda: write_new(c.p("\u6587" * chars), b"x"))
    c.op("one character more", ALICE, lambda: write_new(c.p("\u6587" * (chars + 1)), b"x"), "ENAMETOOLONG")
    c.op("a deep path under the key limit", ALICE, lambda: deep(c.p(), 4))
    c.op("a path past the 1,024-byte key limit", ALICE, lambda: deep(c.p("deeper"), 6), "ENAMETOOLONG")


def deep(base, levels):
    os.makedirs(base, exist_ok=True)
    path = base
    for _ in range(levels):
        path = os.path.join(path, "d" * 200)
        if not os.path.isdir(path):
            os.mkdir(path)
    write_new(os.path.join(path, "f"), b"deep")


def main():
    for fn in CASES:
        name = fn.__name__.rstrip("_")
        c = Case(name)
        try:
            fn(c)
        except OSError as e:
            report(name, "the case ran to its end", "ok", "raised %s" % e)
    print(json.dumps({"summary": {"passed": passed, "failed": failed}}), flush=True)


main()
