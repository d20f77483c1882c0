"""Reading the files vfpick reads: never blocking, regular files only, bounded.

A FIFO or a device where a config, state or XML file should be (planted, or a mistake) must
not hang the hook of every VM start or feed it endless bytes: each file is opened with
O_NONBLOCK, fstat'ed after the open (no race with a swap), refused unless regular, and read up
to a limit. sysfs and procfs attributes are regular files, so they read the same way.

On the hook path of every domain (the config): ``os`` only.
"""

import os

_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


class NotRegularFile(OSError):
    """A path that is a FIFO, device, socket or directory where a file is wanted."""


def _kind(mode):
    import stat

    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def read_fd(fd, limit):
    """At most limit + 1 bytes of the regular file open on *fd* (one past: the caller can tell
    "too large" from "exactly the limit"). OSError (NotRegularFile) for anything else."""
    import stat

    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        import errno

        raise NotRegularFile(errno.EINVAL, "not a regular file (%s)" % _kind(mode))
    chunks, size = [], 0
    while size <= limit:
        chunk = os.read(fd, min(1 << 16, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def read_file(path, limit, follow=True, dir_fd=None):
    """The bytes of regular file *path* (at most limit + 1); OSError when it cannot be read or is
    not a regular file. follow=False refuses a symlink (ELOOP)."""
    flags = _FLAGS if follow else _FLAGS | os.O_NOFOLLOW
    fd = os.open(path, flags, dir_fd=dir_fd)
    try:
        return read_fd(fd, limit)
    finally:
        os.close(fd)


def read_text(path, limit, encoding="utf-8", errors="strict"):
    """read_file decoded; UnicodeDecodeError (a ValueError) for bytes that are not *encoding*."""
    return read_file(path, limit).decode(encoding, errors)
