"""User errors: VfpickError's one-line folding, and the contract's main messages pinned exactly.

Every user error is one `vfpick: ...` line on stderr and exit 1, and changes no claim
(docs/reference.md, "Exit status and errors"). The table runs in-process through cli.main
(the hook's refusal through hook.run), so a reworded message shows up here as a diff of the
whole line.
"""

import io
import os

import pytest
from lxml import etree

from clitools import claims_file, domain
from vfpick import cli, hook
from vfpick.domscan import NS
from vfpick.errors import (ConfigError, DistinctImpossible, LiveMoveFailed, StateCorrupt,
                           VfpickError, XmlError)


@pytest.mark.parametrize("args, text", [
    (("pool 'fast'\n  is exhausted",), "pool 'fast' is exhausted"),
    (("\ttabs\r\nand  runs \x0b of\fspaces \n",), "tabs and runs of spaces"),
    (("",), ""),
    ((), ""),
    ((OSError(2, "No such\nfile"),), "[Errno 2] No such file"),
    (("first\nline", "second"), "first line"),
])
@pytest.mark.parametrize("cls", [VfpickError, ConfigError, XmlError, DistinctImpossible,
                                 StateCorrupt, LiveMoveFailed])
def test_a_vfpick_error_is_one_line_whatever_its_message_holds(cls, args, text):
    e = cls(*args)
    assert str(e) == text
    assert e.args == args  # only the rendering folds: the arguments stay as given


def run(host, capsys, *argv):
    rc = cli.main(["--config", host.config_path] + list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def xml_file(host, name, data):
    path = os.path.join(host.base, name + ".xml")
    with open(path, "wb") as f:
        f.write(data)
    return path


def unknown_pool(host, capsys):
    host.write_config(pools={"fast": "pfs = ens1f0\n", "slow": "pfs = ens2f0\n"})
    return ["resolve", xml_file(host, "typo", domain(pool="fsat"))]


def pool_exhausted(host, capsys):
    host.write_config(pools={"fast": "pfs = ens1f0\n"})
    for i in range(2):  # 2 x 4 NICs: all 8 VFs of ens1f0
        assert run(host, capsys, "resolve", xml_file(host, "d%d" % i, domain("d%d" % i, nics=4)))[0] == 0
    return ["resolve", xml_file(host, "big", domain("big", nics=2))]


def strict_impossible(host, capsys):
    host.write_config(pools={"fast": "pfs = ens1f0 ens1f1\nstrict = yes\n"})
    return ["resolve", xml_file(host, "three", domain("three", nics=3))]


def not_a_domain(host, capsys):
    host.write_config()
    return ["resolve", xml_file(host, "net", b"<network><name>x</name></network>")]


def bad_key(host, capsys):
    host.write_config()
    with open(host.config_path, "a") as f:
        f.write("[link up0]\npfs = ens1f0 ens1f1\nspeed = 25000\n")
    return ["status"]


def bad_value(host, capsys):
    host.write_config(pools={"fast": "pfs = ens1f0\n"})
    with open(host.config_path, "a") as f:
        f.write("numa = sometimes\n")
    return ["status"]


def corrupt_state(host, capsys):
    host.write_config()
    os.makedirs(host.state_dir, mode=0o700, exist_ok=True)
    with open(os.path.join(host.state_dir, "claims.json"), "wb") as f:
        f.write(b'{"version": 1, "claims": [')
    return ["resolve", xml_file(host, "guest", domain())]


# (setup, the whole stderr): {config} is the config file, {state} the state file.
MESSAGES = {
    "unknown pool": (unknown_pool,
                     "vfpick: network 'fsat' is neither a vfpick pool (pools: fast, slow) nor a "
                     "libvirt network of this host; fix <source network=...> or add [pool fsat] "
                     "to {config}\n"),
    "pool exhausted": (pool_exhausted,
                       "vfpick: pool 'fast' is exhausted: no free VF for NIC 1 of 2 (8 VFs, all "
                       "claimed or in use); release a domain or add PFs to the pool\n"),
    "strict distinctness impossible": (
        strict_impossible,
        "vfpick: pool 'fast' cannot give NIC 3 of 3 a link of its own (distinct=link, strict=yes); "
        "free VFs on another link, or set strict=no\n"),
    "bad XML": (not_a_domain, "vfpick: not a libvirt domain: the root element is <network>\n"),
    "bad config key": (bad_key, "vfpick: {config}: [link up0] speed: unknown key (known: pfs)\n"),
    "bad config value": (bad_value,
                         "vfpick: {config}: [pool fast] numa: 'sometimes' is not one of required, "
                         "preferred, ignore\n"),
    "corrupt state file": (corrupt_state,
                           "vfpick: state file {state} is corrupt (Expecting value: line 1 column "
                           "27 (char 26)); it was kept untouched for inspection; rebuild the claims "
                           "from libvirt with 'vfpick reconcile --rebuild'\n"),
}


@pytest.mark.parametrize("case", list(MESSAGES))
def test_a_user_error_is_exactly_its_one_line_exit_1_and_no_claim_changes(host, capsys, case):
    setup, expected = MESSAGES[case]
    argv = setup(host, capsys)
    capsys.readouterr()  # the setup's own output (warnings of the filling resolves)
    before = claims_file(host)
    state = os.path.join(host.state_dir, "claims.json")
    assert run(host, capsys, *argv) == (1, "", expected.format(config=host.config_path, state=state))
    assert claims_file(host) == before


def test_a_vf_held_by_another_domain_is_refused_by_the_hook_in_one_line(host, capsys):
    host.write_config()
    rc, out, _ = run(host, capsys, "resolve", xml_file(host, "owner", domain("owner")))
    assert rc == 0
    root = etree.fromstring(out.encode())
    owner_uuid = root.findtext("uuid")
    vf = root.find("metadata").find("{%s}domain/{%s}nic" % (NS, NS)).get("vf")
    # The same hostdev under another name and uuid, written by hand (no vfpick metadata).
    root.find("name").text = "thief"
    root.find("uuid").text = "11111111-2222-4333-8444-555555555555"
    root.remove(root.find("metadata"))
    before = claims_file(host)
    stdout, stderr = io.BytesIO(), io.StringIO()
    rc = hook.run(["thief", "prepare", "begin", "-"], stdin=io.BytesIO(etree.tostring(root)),
                  stdout=stdout, stderr=stderr, config_path=host.config_path)
    assert (rc, stdout.getvalue(), stderr.getvalue()) == (1, b"", (
        "vfpick: VF %s of domain 'thief' is held by domain 'owner' (%s); 'thief' names this VF by "
        "hand (no vfpick metadata for it), so 'vfpick repick' cannot move it: ask for a NIC from "
        "pool 'fast' instead (<interface type='network'><source network='fast'/>) and run "
        "'vfpick repick thief', or free it with 'vfpick release %s' if 'owner' no longer needs it\n"
        % (vf, owner_uuid, owner_uuid)))
    assert claims_file(host) == before
