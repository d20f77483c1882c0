"""The command line. ``main(argv=None) -> int``; user errors become one ``vfpick:`` line + exit 1.

Commands import what they need when they run: lxml only for those that rewrite XML,
libvirt only for those that talk to libvirt.
"""

import argparse
import os
import sys

from vfpick import config as configmod
from vfpick.errors import DomainNotFound, VfpickError

MAX_INPUT = 4 << 20


def _read_input(path):
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_INPUT + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_INPUT + 1)
    except OSError as e:
        raise VfpickError("cannot read %s: %s" % (path, e.strerror)) from None
    return data


def _load_config(args):
    return configmod.load(configmod.config_path(args.config))


def _warn(message):
    sys.stderr.write("vfpick: warning: %s\n" % message)


def cmd_resolve(args):
    from vfpick import resolver

    cfg = _load_config(args)
    result = resolver.resolve(cfg, _read_input(args.file))
    for w in result.warnings:
        _warn(w)
    out = sys.stdout.buffer
    out.write(result.xml)
    if not result.xml.endswith(b"\n"):
        out.write(b"\n")
    return 0


def cmd_status(args):
    from vfpick import resolver, status, topology

    cfg = _load_config(args)
    topo = topology.for_config(cfg)
    claims = resolver.store_for(cfg).snapshot().mapping()
    report = status.status_report(cfg, topo, claims, resolver.running_vfs(cfg))
    print(status.to_json(report) if args.json else status.render_status(report))
    return 0


def cmd_topology(args):
    from vfpick import resolver, status, topology

    cfg = _load_config(args)
    topo = topology.discover(cfg.sysfs_root, None, cfg.links)
    claims = resolver.store_for(cfg).snapshot().mapping()
    report = status.topology_report(topo, claims)
    print(status.to_json(report) if args.json else status.render_topology(report))
    return 0


def find_uuid(claims, who):
    """UUID of the domain named or identified by *who* among the claims, or None."""
    lowered = who.lower()
    uuids = {c.uuid for c in claims.all() if c.uuid == lowered}
    if uuids:
        return lowered
    by_name = {c.uuid for c in claims.all() if c.domain == who}
    if len(by_name) > 1:
        raise VfpickError("several domains named '%s' hold claims (%s); release by UUID"
                          % (who, ", ".join(sorted(by_name))))
    return by_name.pop() if by_name else None


def cmd_release(args):
    from vfpick import resolver

    cfg = _load_config(args)
    with resolver.store_for(cfg).transaction() as claims:
        uuid = find_uuid(claims, args.domain)
        if uuid is None:
            raise DomainNotFound("no claims for domain '%s' (see vfpick status)" % args.domain)
        dropped = claims.drop_uuid(uuid)
    for c in dropped:
        print("released %s (%s, pool %s) from %s" % (c.vf, c.mac, c.pool, c.domain))
    return 0


def cmd_simulate(args):
    from vfpick import simhost

    try:
        spec = simhost.load_spec(args.spec)
    except (OSError, ValueError) as e:
        raise VfpickError("cannot load simulated host spec %s: %s (presets: %s)"
                          % (args.spec, e, ", ".join(simhost.PRESETS))) from None
    root = os.path.abspath(args.dir)
    sysfs_root = simhost.build(root, spec)
    print("simulated host written to %s" % sysfs_root)
    if args.write_config:
        text = simhost.sample_config(
            sysfs_root, os.path.join(root, "state"), spec,
            run_dir=os.path.join(root, "run"), config_dir=os.path.join(root, "etc"))
        os.makedirs(os.path.join(root, "run"), exist_ok=True)
        os.makedirs(os.path.join(root, "etc", "networks"), exist_ok=True)
        with open(args.write_config, "w", encoding="utf-8") as f:
            f.write(text)
        print("config written to %s" % args.write_config)
    return 0


class _Parser(argparse.ArgumentParser):
    # argparse's own exit 2 and multi-line usage break the one-line error contract.
    def error(self, message):
        raise VfpickError("%s (see '%s --help')" % (message, self.prog))


def build_parser():
    parser = _Parser(
        prog="vfpick", description="Pick SR-IOV VFs for libvirt domains: one domain's NICs on "
        "distinct links, load spread over the host's links.")
    parser.add_argument("--config", metavar="FILE",
                        help="config file (default: $VFPICK_CONFIG or /etc/vfpick.ini)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("topology", help="PFs, links, cards, NUMA, VFs and who holds them")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_topology)

    p = sub.add_parser("resolve", help="resolve pool interfaces, record claims, print the XML")
    p.add_argument("file", metavar="FILE|-")
    p.set_defaults(func=cmd_resolve)

    p = sub.add_parser("status", help="per pool, link and PF: usage; per claim: the domain")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("release", help="drop a domain's claims")
    p.add_argument("domain", metavar="NAME|UUID")
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("simulate", help="write a simulated SR-IOV host (sysfs tree) to try vfpick")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--spec", default="two-dual-port",
                   help="preset name or JSON spec file (default: two-dual-port)")
    p.add_argument("--write-config", metavar="FILE", help="also write a config using the host")
    p.set_defaults(func=cmd_simulate)
    return parser


def main(argv=None):
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except VfpickError as e:
        sys.stderr.write("vfpick: %s\n" % e)
        return 1
    except BrokenPipeError:
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("vfpick: interrupted\n")
        return 1
