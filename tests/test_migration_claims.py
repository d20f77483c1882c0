"""Claims on both hosts of a live migration, in libvirt's hook order (two simulated hosts,
two state dirs; the hook is called in process as libvirt would call it).

libvirt (qemu driver, 9.0): destination `migrate begin` (filter) -> `prepare begin` -> `start
begin` -> `started begin`; on success the source stops the domain (`stopped end`, `release
end`), then with --undefinesource deletes its definition (no hook); with --persistent the
destination writes the definition after its last hook, from the source's persistent XML. A
failed incoming migration ends on the destination with `release end`.
"""

import io
import os

import pytest

from clitools import domain, hostdev_vfs
from vfpick import hook, resolver, stale

NAME = "mig"


class Side:
    """One host: its simulated sysfs, config, state, libvirt config dir and run dir."""

    def __init__(self, host):
        self.host = host
        self.cfg = host.write_config()

    def hook(self, op, subop, xml):
        out, err = io.BytesIO(), io.StringIO()
        rc = hook.run([NAME, op, subop, "-"], stdin=io.BytesIO(xml), stdout=out, stderr=err,
                      config_path=self.host.config_path)
        assert rc == 0, err.getvalue()
        return out.getvalue()

    def claims(self):
        return sorted((c.vf, c.mac, c.active) for c in
                      resolver.store_for(self.cfg).snapshot().mapping().values() if c.domain == NAME)

    def _path(self, directory):
        return os.path.join(directory, NAME + ".xml")

    def define(self, xml):
        with open(self._path(self.host.config_dir), "wb") as f:
            f.write(xml)

    def undefine(self):
        os.unlink(self._path(self.host.config_dir))

    def run(self, xml):
        with open(self._path(self.host.run_dir), "wb") as f:
            f.write(b"<domstatus state='running'>" + xml + b"</domstatus>")

    def stop(self, xml):
        if os.path.exists(self._path(self.host.run_dir)):
            os.unlink(self._path(self.host.run_dir))
        self.hook("stopped", "end", xml)
        self.hook("release", "end", xml)

    def stale(self):
        return stale.stale_uuids(self.cfg, resolver.store_for(self.cfg).snapshot().mapping().values())


@pytest.fixture
def hosts(make_host):
    """A source running the domain; a destination where another domain holds the VFs at the
    source's addresses (same hardware layout), so the filter must pick other ones."""
    src, dst = Side(make_host()), Side(make_host())
    xml = resolver.resolve(src.cfg, domain(NAME, nics=2)).xml
    src.define(xml)
    src.hook("prepare", "begin", xml)
    src.run(xml)
    # Same layout, same empty state: the destination's first 2-NIC domain gets the same VFs.
    blocker = resolver.resolve(dst.cfg, domain("blocker", nics=2))
    assert sorted(p.vf for p in blocker.picks.values()) == [c[0] for c in src.claims()]
    with open(os.path.join(dst.host.config_dir, "blocker.xml"), "wb") as f:
        f.write(blocker.xml)
    return src, dst, xml


def migrate(src, dst, xml):
    """The destination's half of a successful migration; returns the domain's live XML there."""
    filtered = dst.hook("migrate", "begin", xml) or xml
    dst.hook("prepare", "begin", filtered)
    dst.run(filtered)
    return filtered


def vfs(side):
    return sorted(vf for vf, _mac, _active in side.claims())


def test_plain_migration(hosts):
    src, dst, xml = hosts
    src_vfs = vfs(src)
    live = migrate(src, dst, xml)
    assert [a for _, _, a in dst.claims()] == [True, True]
    assert not set(vfs(dst)) & set(src_vfs), "the destination's VFs, not the source's"
    assert {m for _, m, _ in dst.claims()} == {m for _, m, _ in src.claims()}
    src.stop(xml)
    # the source keeps its definition: reserved there, as for any stopped domain
    assert [(vf, a) for vf, _, a in src.claims()] == [(vf, False) for vf in src_vfs]
    assert src.stale() == frozenset() and dst.stale() == frozenset()  # dst: running, transient
    # without --persistent the destination has no definition: its claims go when it stops
    dst.stop(live)
    assert dst.claims() == []


def test_undefinesource_leaves_stale_claims_on_the_source_only(hosts):
    src, dst, xml = hosts
    migrate(src, dst, xml)
    src.stop(xml)
    src.undefine()  # libvirt deletes the definition after release end: no hook sees it
    uuid = resolver.store_for(src.cfg).snapshot().all()[0].uuid
    assert src.stale() == {uuid}   # status marks them; the watcher or reconcile timer drops them
    assert dst.stale() == frozenset()


def test_persistent_definition_converges_on_the_destinations_vfs(hosts):
    src, dst, xml = hosts
    live = migrate(src, dst, xml)
    # other domains come and go on the destination meanwhile: the least loaded links move
    for i in range(3):
        other = resolver.resolve(dst.cfg, domain("other%d" % i, nics=1))
        with open(os.path.join(dst.host.config_dir, "other%d.xml" % i), "wb") as f:
            f.write(other.xml)
    before = dst.claims()
    # --persistent: libvirt writes the source's persistent XML (source addresses) as is
    dst.define(xml)
    assert dst.stale() == frozenset()
    # what `vfpick repick` / the watcher does with that definition on the destination
    result = resolver.resolve(dst.cfg, xml)
    assert sorted(hostdev_vfs(result.xml)) == sorted(hostdev_vfs(live)) == vfs(dst)
    assert dst.claims() == before   # the running domain's claims: kept, still active
    dst.define(result.xml)
    dst.stop(live)
    assert [(vf, a) for vf, _, a in dst.claims()] == [(vf, False) for vf, _, _ in before]


def test_failed_incoming_migration_drops_the_destinations_claims(hosts):
    src, dst, xml = hosts
    filtered = dst.hook("migrate", "begin", xml)
    dst.hook("prepare", "begin", filtered)
    assert len(dst.claims()) == 2
    dst.stop(filtered)      # the migration failed: no definition was written here
    assert dst.claims() == []
    assert [a for _, _, a in src.claims()] == [True, True]  # the source still runs it
