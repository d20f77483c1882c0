import os

import pytest

from vfpick import config as configmod
from vfpick.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_defaults_and_name_resolution(host):
    cfg = host.write_config()
    pool = cfg.pools["fast"]
    assert pool.pfs == ("0000:3b:00.0", "0000:3b:00.1", "0000:af:00.0", "0000:af:00.1")
    assert (pool.distinct, pool.strict, pool.numa, pool.policy) == ("link", False, "preferred", "spread")
    assert (pool.trust, pool.spoofchk) == (None, None)
    assert cfg.state_dir == host.state_dir and cfg.connect == "qemu:///system"


def test_pci_addresses_and_links(host):
    cfg = host.write_config(
        pools={"p": "pfs = 0000:3b:00.1, af:00.0  ; short form\ndistinct = card\nstrict = yes\n"
                    "numa = required\npolicy = pack\ntrust = on\nspoofchk = off\n"},
        extra="[link uplink-a]\npfs = ens1f0 ens2f0\n")
    pool = cfg.pools["p"]
    assert pool.pfs == ("0000:3b:00.1", "0000:af:00.0")
    assert (pool.distinct, pool.strict, pool.numa, pool.policy, pool.trust, pool.spoofchk) == \
        ("card", True, "required", "pack", True, False)
    assert cfg.links == {"uplink-a": ("0000:3b:00.0", "0000:af:00.0")}


BAD = [
    # (pool body or extra text, section, key, words in the message)
    ("pfs = ens1f0\ndistinct = rack\n", "[pool fast]", "distinct", "'rack' is not one of card, link, pf, none"),
    ("pfs = ens1f0\nstrict = maybe\n", "[pool fast]", "strict", "'maybe'"),
    ("pfs = ens1f0\nnuma = always\n", "[pool fast]", "numa", "required, preferred, ignore"),
    ("pfs = ens1f0\npolicy = random\n", "[pool fast]", "policy", "spread, pack"),
    ("pfs = ens1f0\ntrust = yes\n", "[pool fast]", "trust", "on, off, unset"),
    ("pfs = ens1f0\ncolour = blue\n", "[pool fast]", "colour", "unknown key"),
    ("pfs = ens1f0v0\n", "[pool fast]", "pfs", "'ens1f0v0' is not an SR-IOV PF"),
    ("pfs = 0000:3c:00.0\n", "[pool fast]", "pfs", "is not an SR-IOV PF"),  # a VF
    ("pfs = ../../etc\n", "[pool fast]", "pfs", "is not an SR-IOV PF"),
    ("pfs =\n", "[pool fast]", "pfs", "empty"),
    ("distinct = pf\n", "[pool fast]", "pfs", "missing"),
    ("pfs = ens1f0 ens1f0\n", "[pool fast]", "pfs", "listed twice"),
]


@pytest.mark.parametrize("body,section,key,words", BAD)
def test_bad_pool_values_name_file_section_key(host, body, section, key, words):
    with pytest.raises(ConfigError) as err:
        host.write_config(pools={"fast": body})
    message = str(err.value)
    assert message.startswith(host.config_path + ": " + section + " " + key + ": ")
    assert words in message


@pytest.mark.parametrize("text,words", [
    ("[vfpick]\nstate_dir = relative/dir\n", "[vfpick] state_dir: 'relative/dir' is not an absolute path"),
    ("[vfpick]\nstatedir = /x\n", "[vfpick] statedir: unknown key"),
    ("[vfpick]\n[vfpick]\n", "[vfpick]: section appears twice"),
    ("[vfpick]\nsysfs_root = /a\nsysfs_root = /b\n", "[vfpick] sysfs_root: key appears twice"),
    ("state_dir = /x\n", "a key before any [section]"),
    ("[pools fast]\npfs = x\n", "[pools fast]: unknown section"),
    ("[DEFAULT]\nstrict = yes\n", "[DEFAULT]: unknown section"),
    ("[pool]\npfs = x\n", "[pool]: unknown section"),
    ("[pool a/b]\npfs = x\n", "pool name 'a/b'"),
    ("[link up]\n", "[link up] pfs: missing"),
    ("[link up]\npfs = ens1f0\nspeed = 10\n", "[link up] speed: unknown key"),
])
def test_bad_files(host, text, words):
    text = text.replace("[vfpick]\n", "[vfpick]\nsysfs_root = %s\n" % host.sysfs, 1) \
        if "sysfs_root = /a" not in text else text
    with pytest.raises(ConfigError) as err:
        configmod.parse(text, "/etc/vfpick.ini")
    assert words in str(err.value)
    assert str(err.value).startswith("/etc/vfpick.ini")


def test_pf_in_two_links_is_refused(host):
    with pytest.raises(ConfigError, match=r"\[link b\] pfs: 0000:3b:00.0 is already in \[link a\]"):
        host.write_config(extra="[link a]\npfs = ens1f0 ens2f0\n[link b]\npfs = ens1f0\n")


def test_missing_file_tells_how_to_choose_one(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config .*nope.ini: No such file.*--config FILE"):
        configmod.load(str(tmp_path / "nope.ini"))


def test_config_path_precedence():
    assert configmod.config_path("/a", {"VFPICK_CONFIG": "/b"}) == "/a"
    assert configmod.config_path(None, {"VFPICK_CONFIG": "/b"}) == "/b"
    assert configmod.config_path(None, {}) == "/etc/vfpick.ini"


def test_sample_config_is_valid_on_the_demo_host(host):
    with open(os.path.join(REPO, "etc", "vfpick.ini")) as f:
        text = f.read().replace("sysfs_root = /sys", "sysfs_root = %s" % host.sysfs)
    cfg = configmod.parse(text, "etc/vfpick.ini")
    assert set(cfg.pools) == {"fast"} and "uplink-a" in cfg.links


def test_ini_syntax_continuations_and_comments(host):
    text = ("[vfpick]\nsysfs_root = %s   ; inline comment\n# full-line comment\n\n"
            "[ pool  fast ]\npfs = ens1f0\n    ens1f1 ;first port pair\n  ens2f0#no-space-is-not-a-comment\n"
            % host.sysfs)
    # no netdev has that name: listed as missing, not cut at the '#'
    assert configmod.parse(text, "f.ini").pools["fast"].missing == ("ens2f0#no-space-is-not-a-comment",)
    cfg = configmod.parse(text.replace("#no-space-is-not-a-comment", ""), "f.ini")
    assert cfg.pools["fast"].pfs == ("0000:3b:00.0", "0000:3b:00.1", "0000:af:00.0")


@pytest.mark.parametrize("text,words", [
    ("[vfpick\n", "line 1: malformed section header"),
    ("[vfpick]\nsysfs_root: /sys\n", "line 2: expected 'key = value'"),
    ("[vfpick]\n= /sys\n", "expected 'key = value'"),
])
def test_ini_syntax_errors(text, words):
    with pytest.raises(ConfigError, match=words):
        configmod.parse(text, "f.ini")


@pytest.mark.parametrize("listed,missing", [
    ("ens1f0 ens9f0 ens2f0", ("ens9f0",)),                  # never there, or renamed
    ("ens1f0 0000:5e:00.0 ens2f0", ("0000:5e:00.0",)),      # a card removed
    ("ens9f0 ens9f1", ("ens9f0", "ens9f1")),                # none left: loads, resolve refuses
])
def test_a_pool_pf_not_on_this_host_degrades_the_pool_not_the_config(host, listed, missing):
    cfg = host.write_config(pools={"fast": "pfs = %s\n" % listed, "other": "pfs = ens1f1\n"},
                            extra="[link uplink-a]\npfs = ens1f0 ens9f0\n")
    pool = cfg.pools["fast"]
    assert pool.missing == missing
    present = {"ens1f0": "0000:3b:00.0", "ens2f0": "0000:af:00.0"}
    assert pool.pfs == tuple(present[n] for n in listed.split() if n in present)
    assert cfg.pools["other"].pfs == ("0000:3b:00.1",) and cfg.pools["other"].missing == ()
    assert cfg.links == {"uplink-a": ("0000:3b:00.0",)}


def test_a_renamed_pf_netdev_is_missing_under_its_old_name(host):
    from test_failopen import rename_netdev

    host.write_config()
    rename_netdev(host, "ens2f1", "ens2f1np1")
    pool = configmod.load(host.config_path).pools["fast"]
    assert pool.missing == ("ens2f1",) and "0000:af:00.1" not in pool.pfs and len(pool.pfs) == 3
