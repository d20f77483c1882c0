"""The claims store: one JSON file (its format: vfpick.state.codec), an flock'd lock file beside
it, atomic replace.

Imported by the qemu hook only for vfpick's own domains (never for the others); still no typing,
dataclasses, tempfile or contextlib. ``stat`` is free: ``os`` has
already loaded it.
"""

import errno
import fcntl
import os
import stat
import time
import types

from vfpick import names, pci, safeio
from vfpick.errors import LockTimeout, StateCorrupt, StateError
from vfpick.state import codec, lock

STATE = "claims.json"
LOCK = "claims.lock"
# One fixed temp name is safe: it is only written under the exclusive lock, and a
# crash leftover is simply replaced on the next write instead of piling up.
TEMP = STATE + ".tmp"
DEFAULT_LOCK_TIMEOUT = 30.0
# ~300 bytes a claim: far beyond any host's VFs, short of what a forged file could make us load.
MAX_STATE_BYTES = 64 << 20

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _OneThread:
    """vfpick.state.turns for a process that runs one thread: the state dirs it holds, and no
    turns to take. Shared by all of the process's one-thread stores, so nesting is caught."""

    def __init__(self):
        self._held = set()

    def held(self):
        return self._held

    def turn(self, key):
        return self

    def acquire(self, timeout=-1):
        return True

    def release(self):
        pass


_ONE_THREAD = _OneThread()


def _why(exc):
    return exc.strerror or str(exc)


class ClaimSet:
    """The claims, keyed by VF address, and the drained PFs. Writable only inside its
    transaction."""

    def __init__(self, claims, writable, generation=0, gens=None, drained=()):
        self._claims = claims
        self._writable = writable
        self._drained = set(drained)
        # generation: the file's, as read. gens: {vf: generation that last changed the claim};
        # put stamps a changed claim with generation + 1, the file's generation once written.
        self.generation = generation
        self._gens = {} if gens is None else gens

    def gen(self, vf):
        """The generation that last changed the claim of *vf* (0: before version 2), or None."""
        return self._gens.get(vf) if vf in self._claims else None

    def get(self, vf):
        return self._claims.get(vf)

    def for_uuid(self, uuid):
        return [c for c in self.all() if c.uuid == uuid]

    def all(self):
        return [self._claims[vf] for vf in sorted(self._claims, key=pci.sort_key)]

    def mapping(self):
        # A live view, not a copy: the policy reads it and cannot write through it.
        return types.MappingProxyType(self._claims)

    def put(self, claim):
        self._check_writable()
        # Refuse here what load() would call corrupt, rather than write a file we cannot read.
        problem = codec.claim_problem(claim)
        if problem:
            raise ValueError("bad claim %r: %s" % (claim, problem))
        if self._claims.get(claim.vf) == claim:
            return  # unchanged: keeps its generation
        self._claims[claim.vf] = claim
        self._gens[claim.vf] = self.generation + 1

    def drop(self, vf):
        self._check_writable()
        self._gens.pop(vf, None)
        return self._claims.pop(vf, None)

    def drop_uuid(self, uuid):
        self._check_writable()
        dropped = self.for_uuid(uuid)
        for claim in dropped:
            del self._claims[claim.vf]
            self._gens.pop(claim.vf, None)
        return dropped

    def drained(self):
        """PF addresses taken out of service (``vfpick drain``): new picks avoid them."""
        return frozenset(self._drained)

    def set_drained(self, pf_addrs):
        self._check_writable()
        for addr in pf_addrs:
            if not pci.is_canonical(addr):
                raise ValueError("bad drained PF %r: not a canonical PCI address" % (addr,))
        self._drained = set(pf_addrs)

    def _check_writable(self):
        if not self._writable:
            # A change after the transaction (or to a snapshot) would be silently lost.
            raise RuntimeError("claims are read-only outside their transaction")


class StateStore:
    """Claims in state_dir/claims.json, serialized by flock on state_dir/claims.lock.

    _fault: test seam called while writing with "after-temp-open", "after-temp-write" or
    "after-rename"; what it raises is handled as a failure at that point."""

    def __init__(self, state_dir, lock_timeout=DEFAULT_LOCK_TIMEOUT, one_thread=False,
                 _fault=None):
        self.state_dir = state_dir
        # one_thread: this process runs one thread (the hook), so it need not import threading.
        self.one_thread = one_thread
        self.path = os.path.join(state_dir, STATE)
        self.lock_timeout = lock_timeout
        self._fault = _fault or (lambda stage: None)

    @classmethod
    def for_config(cls, config, one_thread=False):
        return cls(config.state_dir, lock_timeout=config.lock_timeout, one_thread=one_thread)

    def transaction(self):
        """Context manager yielding a writable ClaimSet under the exclusive lock."""
        return _Transaction(self)

    def snapshot(self):
        """A read-only ClaimSet, read under the shared lock (released on return)."""
        dfd = self._open_dir(create=False)
        if dfd is None:
            return ClaimSet({}, writable=False)  # never ran: reading must not create anything
        lfd = None
        try:
            lfd = self._lock(dfd, fcntl.LOCK_SH)
            claims, generation, gens, drained = self._load(dfd)
            return ClaimSet(claims, False, generation, gens, drained)
        finally:
            self._release(dfd, lfd)

    def quarantine(self):
        """Moves the state file aside (for a rebuild); its new path, or None if there was none."""
        dfd = self._open_dir(create=True)
        lfd = None
        try:
            lfd = self._lock(dfd, fcntl.LOCK_EX)
            n = 1
            while os.path.lexists(os.path.join(self.state_dir, "%s.corrupt-%d" % (STATE, n))):
                n += 1
            name = "%s.corrupt-%d" % (STATE, n)
            try:
                os.rename(STATE, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except FileNotFoundError:
                return None
            os.fsync(dfd)
            return os.path.join(self.state_dir, name)
        except OSError as exc:
            raise StateError("cannot move state file %s aside: %s" % (self.path, _why(exc)))
        finally:
            self._release(dfd, lfd)

    # Every path below is opened relative to one O_NOFOLLOW directory fd, so
    # swapping the directory for a symlink midway cannot redirect a write.

    def _open_dir(self, create):
        try:
            dfd = os.open(self.state_dir, _DIR_FLAGS)
        except FileNotFoundError:
            if not create:
                return None
        except OSError as exc:
            raise self._dir_error(exc)
        else:
            return self._guard_dir(dfd, create)
        try:
            os.makedirs(self.state_dir, 0o700, exist_ok=True)  # exist_ok: a racing first run
            dfd = os.open(self.state_dir, _DIR_FLAGS)
        except OSError as exc:
            raise self._dir_error(exc)
        # A racing creator (exist_ok) may have made it: judged like any existing dir.
        return self._guard_dir(dfd, True)

    def _guard_dir(self, dfd, writing):
        """Whoever can write the directory can rename a forged claims.json into place."""
        st = os.fstat(dfd)
        if st.st_uid != os.geteuid():
            os.close(dfd)
            raise StateError("state directory %s is owned by uid %d, not %d; fix with chown"
                             % (self.state_dir, st.st_uid, os.geteuid()))
        if stat.S_IMODE(st.st_mode) & 0o022:
            # Never adopted, not even to tighten it: what is in it may already be forged.
            os.close(dfd)
            raise StateError(
                "state directory %s is writable by %s (mode %04o), so its files may be forged; "
                "check them (or rebuild with 'vfpick reconcile --rebuild'), then chmod 0700 %s"
                % (self.state_dir, "everyone" if st.st_mode & 0o002 else "its group",
                   stat.S_IMODE(st.st_mode), names.shell_word(self.state_dir)))
        if writing and stat.S_IMODE(st.st_mode) & 0o077:
            try:
                os.fchmod(dfd, 0o700)
            except OSError as exc:
                os.close(dfd)
                raise StateError("cannot make state directory %s private (0700): %s"
                                 % (self.state_dir, _why(exc)))
        return dfd

    def _guard_entry(self, fd, path, what):
        """A state file or lock another uid owns or could have written is never used."""
        st = os.fstat(fd)
        problem = None
        if not stat.S_ISREG(st.st_mode):
            problem = "is not a regular file"
        elif st.st_uid != os.geteuid():
            problem = "is owned by uid %d, not %d" % (st.st_uid, os.geteuid())
        elif stat.S_IMODE(st.st_mode) & 0o022:
            problem = "is writable by others (mode %04o)" % stat.S_IMODE(st.st_mode)
        if problem:
            os.close(fd)
            raise StateError("%s %s %s, so it may be forged; vfpick does not use it: check it, "
                             "then remove it (rebuild the claims with 'vfpick reconcile "
                             "--rebuild')" % (what, path, problem))

    def _dir_error(self, exc):
        if exc.errno == errno.ELOOP or os.path.islink(self.state_dir):
            return StateError("state directory %s is a symlink; refusing to use it" % self.state_dir)
        return StateError("cannot use state directory %s: %s" % (self.state_dir, _why(exc)))

    def _threads(self):
        if self.one_thread:
            return _ONE_THREAD
        from vfpick.state import turns

        return turns

    def _lock(self, dfd, how):
        key = os.fstat(dfd)[1:3]  # (st_ino, st_dev)
        threads = self._threads()
        if key in threads.held():
            raise RuntimeError("nested claims transaction on %s would deadlock" % self.state_dir)
        path = os.path.join(self.state_dir, LOCK)
        deadline = time.monotonic() + self.lock_timeout
        turn = threads.turn(key)
        if not turn.acquire(timeout=max(self.lock_timeout, 0)):
            raise LockTimeout(
                "waited %g s for the claims lock %s, held by another thread of this process "
                "(pid %d); raise [vfpick] lock_timeout if such waits are expected"
                % (self.lock_timeout, path, os.getpid()))
        try:
            lfd = self._open_at(dfd, LOCK, os.O_RDWR | os.O_CREAT, "lock file")
            self._guard_entry(lfd, path, "lock file")
            try:
                locked = lock.flock_bounded(lfd, how, max(deadline - time.monotonic(), 0))
                holders = [] if locked else lock.holders(lfd)
            except OSError as exc:
                os.close(lfd)
                raise StateError("cannot lock %s: %s" % (path, _why(exc)))
            if not locked:
                os.close(lfd)
                raise LockTimeout(
                    "waited %g s for the claims lock %s, %s; it is freed when that process ends "
                    "(raise [vfpick] lock_timeout if such waits are expected)"
                    % (self.lock_timeout, path, lock.describe(holders)))
        except BaseException:
            turn.release()
            raise
        threads.held().add(key)
        return lfd

    def _release(self, dfd, lfd):
        if lfd is not None:
            key = os.fstat(dfd)[1:3]
            threads = self._threads()
            threads.held().discard(key)
            os.close(lfd)  # closing drops the flock
            threads.turn(key).release()
        os.close(dfd)

    def _open_at(self, dfd, name, flags, what):
        """fd of state_dir/name never through a symlink; None when it does not exist."""
        try:
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            path = os.path.join(self.state_dir, name)
            if exc.errno == errno.ELOOP:
                raise StateError("%s %s is a symlink; refusing to follow it" % (what, path))
            raise StateError("cannot open %s %s: %s" % (what, path, _why(exc)))

    def _load(self, dfd):
        # O_NONBLOCK: a FIFO planted as the state file must not hang the hook.
        fd = self._open_at(dfd, STATE, os.O_RDONLY | os.O_NONBLOCK, "state file")
        if fd is None:
            return {}, 0, {}, []
        self._guard_entry(fd, self.path, "state file")
        try:
            raw = safeio.read_fd(fd, MAX_STATE_BYTES)
        except OSError as exc:
            raise StateError("cannot read state file %s: %s" % (self.path, _why(exc)))
        finally:
            os.close(fd)
        if len(raw) > MAX_STATE_BYTES:
            raise StateCorrupt("state file %s is larger than %d MiB; it was kept untouched for "
                               "inspection; rebuild the claims from libvirt with 'vfpick "
                               "reconcile --rebuild'" % (self.path, MAX_STATE_BYTES >> 20))
        try:
            return codec.parse(raw)
        except ValueError as exc:
            raise StateCorrupt(
                "state file %s is corrupt (%s); it was kept untouched for inspection; rebuild "
                "the claims from libvirt with 'vfpick reconcile --rebuild'" % (self.path, exc))

    def _write(self, dfd, claimset):
        data = codec.serialize(claimset)
        try:
            try:
                os.unlink(TEMP, dir_fd=dfd)  # left by a writer that crashed holding the lock
            except FileNotFoundError:
                pass
            fd = os.open(TEMP, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=dfd)
            try:
                self._fault("after-temp-open")
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                self._fault("after-temp-write")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(TEMP, STATE, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException as exc:
            try:
                os.unlink(TEMP, dir_fd=dfd)
            except OSError:
                pass
            if isinstance(exc, OSError):
                raise StateError("cannot write state file %s: %s; it was left as it was"
                                 % (self.path, _why(exc)))
            raise
        try:
            self._fault("after-rename")
            os.fsync(dfd)  # makes the rename itself survive a power cut
        except OSError as exc:
            raise StateError("state file %s was replaced but its directory could not be synced: %s"
                             % (self.path, _why(exc)))


class _Transaction:
    # A class rather than contextlib.contextmanager: contextlib is not free on the hook path.

    def __init__(self, store):
        self._store = store
        self._dfd = self._lfd = None

    def __enter__(self):
        store = self._store
        self._dfd = store._open_dir(create=True)
        try:
            self._lfd = store._lock(self._dfd, fcntl.LOCK_EX)
            # Load before yielding: a corrupt file raises here, so it can never be overwritten.
            claims, generation, gens, drained = store._load(self._dfd)
        except BaseException:
            store._release(self._dfd, self._lfd)
            raise
        self._before = (dict(claims), frozenset(drained))
        self._claims = ClaimSet(claims, True, generation, gens, drained)
        return self._claims

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None and (self._claims._claims, self._claims.drained()) != self._before:
                self._store._write(self._dfd, self._claims)
        finally:
            self._claims._writable = False
            self._store._release(self._dfd, self._lfd)
        return False
