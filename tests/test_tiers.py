"""The test tiers (docs/development.md): conftest marks a test `libvirtd` or `testdriver` from
what it uses, so that `-m "not libvirtd"` selects every test that needs no daemon."""

import types

import conftest

DRIVER = conftest.TESTDRIVER_URI


def _plain():
    return None


def _names_the_driver():
    return "test:///default"  # the literal a test's own source names


def _item(fixtures=(), params=None, function=_plain, uri=None):
    item = types.SimpleNamespace(fixturenames=list(fixtures), function=function,
                                 module=types.SimpleNamespace(URI=uri))
    if params is not None:
        item.callspec = types.SimpleNamespace(params=params)
    return item


def test_the_real_libvirtd_fixtures_and_uri_mark_libvirtd():
    for fixture in ("libvirtd", "env", "hook_recorder"):
        assert conftest.tier_markers(_item(fixtures=["tmp_path", fixture])) == {"libvirtd"}
    assert conftest.tier_markers(_item(params={"lvconn": "qemu:///system"})) == {"libvirtd"}


def test_the_test_driver_marks_testdriver():
    assert conftest.tier_markers(_item(fixtures=["conn"])) == {"testdriver"}
    assert conftest.tier_markers(_item(params={"lvconn": DRIVER})) == {"testdriver"}
    assert conftest.tier_markers(_item(uri=DRIVER)) == {"testdriver"}
    assert conftest.tier_markers(_item(function=_names_the_driver)) == {"testdriver"}


def test_a_test_without_libvirt_gets_no_tier_marker():
    assert conftest.tier_markers(_item(fixtures=["host", "tmp_path"])) == set()


def test_this_session_marks_what_it_collected(request):
    for item in request.session.items:
        uses_daemon = bool(set(item.fixturenames) & conftest.LIBVIRTD_FIXTURES)
        if uses_daemon:
            assert item.get_closest_marker("libvirtd") is not None, item.nodeid
    assert request.node.get_closest_marker("libvirtd") is None
    assert request.node.get_closest_marker("testdriver") is None
