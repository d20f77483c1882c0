"""The command line. ``main(argv=None) -> int``; user errors become one ``vfpick:`` line + exit 1.

Commands import what they need when they run: lxml only for those that rewrite XML,
libvirt only for those that talk to libvirt.
"""

import argparse
import os
import sys

from vfpick import __version__, config as configmod
from vfpick.errors import VfpickError



def _read_input(path):
    from vfpick.domscan import MAX_BYTES as MAX_INPUT  # one past it is enough to refuse

    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_INPUT + 1)
        else:
            from vfpick import safeio

            data = safeio.read_file(path, MAX_INPUT)
    except OSError as e:
        raise VfpickError("cannot read %s: %s" % (path, e.strerror)) from None
    return data


def _load_config(args):
    return configmod.load(configmod.config_path(args.config))


def _warn(message):
    sys.stderr.write("vfpick: warning: %s\n" % message)


def _render(report):
    """A command's Report: its lines on stdout, then its warnings; returns its exit status.
    Each escaped as status escapes names: a name or pool from an old state file (a lone
    surrogate, a control character) prints under a strict UTF-8 stdout, on its own line."""
    from vfpick.names import printable

    for line in report.lines:
        print(printable(line))
    for w in report.warnings:
        _warn(printable(w))
    return report.status


def log_line(message):
    """The watcher's log: one timestamped line on stderr per action."""
    import time

    from vfpick.names import printable

    now = time.time()
    # One line each, whatever a domain name in it holds (libvirt refuses only '\n' in names:
    # a '\r' would forge a line at column 0).
    sys.stderr.write("%s.%03d vfpick watch: %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)),
                                                     int(now * 1000) % 1000, printable(message)))
    sys.stderr.flush()


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
    from vfpick import resolver, stale
    from vfpick.commands import status
    from vfpick.host import topology

    cfg = _load_config(args)
    topo = topology.for_config(cfg)
    snapshot = resolver.store_for(cfg).snapshot()
    claims = snapshot.mapping()
    index = stale.domain_index(cfg)
    report = status.status_report(cfg, topo, claims, resolver.running_vfs(cfg),
                                  stale.stale_uuids(cfg, claims.values(), index), snapshot.drained(),
                                  stale.lost_vfs(claims.values(), index),
                                  facts_of=lambda uuid: stale.domain_facts(index, uuid))
    print(status.to_json(report) if args.json else status.render_status(report))
    return 0


def cmd_topology(args):
    from vfpick import resolver
    from vfpick.commands import status
    from vfpick.host import topology

    cfg = _load_config(args)
    topo = topology.discover(cfg.sysfs_root, None, cfg.links)
    claims = resolver.store_for(cfg).snapshot().mapping()
    report = status.topology_report(topo, claims)
    print(status.to_json(report) if args.json else status.render_topology(report))
    return 0


def cmd_check(args):
    from vfpick.commands import check

    findings = check.run(configmod.config_path(args.config), check.Paths(hooks_dir=args.hooks_dir))
    print(check.to_json(findings) if args.json else check.render(findings))
    return check.exit_code(findings)


def cmd_release(args):
    from vfpick.commands import release

    cfg = _load_config(args)
    return _render(release.release(cfg, args.domain, args.connect or cfg.connect))


def cmd_simulate(args):
    from vfpick.host import simhost

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


_JSON_HELP = "JSON instead of a table"
_CONNECT_HELP = "libvirt URI (default: config, qemu:///system)"


def _add_connect(parser, text=_CONNECT_HELP):
    parser.add_argument("--connect", metavar="URI", help=text)


def _add_hooks_dir(parser):
    parser.add_argument("--hooks-dir", default="/etc/libvirt/hooks", metavar="DIR",
                        help="libvirt's hooks dir: the hook is DIR/qemu.d/vfpick (default: %(default)s)")


class _Parser(argparse.ArgumentParser):
    # argparse's own exit 2 and multi-line usage break the one-line error contract.
    def error(self, message):
        raise VfpickError("%s (see '%s --help')" % (message, self.prog))


def cmd_define(args):
    from vfpick.commands import define

    cfg = _load_config(args)
    try:
        report = define.cmd_define(cfg, _read_input(args.file), args.connect or cfg.connect,
                                   start=args.start)
    except define.DefinedNotStarted as e:
        _render(e.report)  # what was defined, then the start's error
        raise
    return _render(report)


def cmd_attach(args):
    from vfpick.commands import hotplug

    cfg = _load_config(args)
    return _render(hotplug.cmd_attach(cfg, args.connect or cfg.connect, args.domain,
                                      _read_input(args.file), live=args.live,
                                      persistent=args.persistent))


def cmd_detach(args):
    from vfpick.commands import hotplug

    cfg = _load_config(args)
    return _render(hotplug.cmd_detach(cfg, args.connect or cfg.connect, args.domain, args.mac,
                                      live=args.live, persistent=args.persistent,
                                      timeout=args.timeout))


def cmd_repick(args):
    from vfpick.commands import define

    cfg = _load_config(args)
    return _render(define.cmd_repick(cfg, args.domain, args.connect or cfg.connect))


def cmd_reconcile(args):
    from vfpick.commands import reconcile

    cfg = _load_config(args)
    return _render(reconcile.cmd_reconcile(cfg, args.connect or cfg.connect, dry_run=args.dry_run,
                                           rebuild=args.rebuild))


def cmd_watch(args):
    from vfpick.commands import watch

    cfg = _load_config(args)
    return watch.cmd_watch(cfg, args.connect or cfg.connect, log_line,
                           metrics_listen=args.metrics_listen)


def cmd_metrics(args):
    from vfpick.commands import metrics

    cfg = _load_config(args)
    if args.textfile:
        metrics.write_textfile(cfg, args.textfile)
    else:
        sys.stdout.buffer.write(metrics.exposition(cfg))
    return 0


def cmd_drain(args):
    from vfpick.commands import drain

    cfg = _load_config(args)
    _live_flags(args)
    report = drain.drain(cfg, args.connect or cfg.connect, args.target, dry_run=args.dry_run,
                         live=args.live, allow_gap=args.allow_nic_gap)
    for w in report.warnings:
        _warn(w)
    from vfpick.names import printable

    print("\n".join(printable(line) for line in drain.render(report, args.dry_run)))
    sys.stdout.flush()  # the report first, then one line per problem
    for problem in report.problems:
        sys.stderr.write("vfpick: %s\n" % " ".join(problem.split()))
    return 1 if report.problems else 0


def cmd_undrain(args):
    from vfpick.commands import drain

    cfg = _load_config(args)
    target, was = drain.undrain(cfg, args.target)
    print("undrained %s: back in service, new picks fill it first" % target.label if was
          else "%s was not drained" % target.label)
    return 0


def cmd_rebalance(args):
    from vfpick.commands import rebalance

    cfg = _load_config(args)
    _live_flags(args)
    return _render(rebalance.cmd_rebalance(cfg, args.connect or cfg.connect, dry_run=args.dry_run,
                                           max_moves=args.max_moves, live=args.live,
                                           allow_gap=args.allow_nic_gap))


def _live_flags(args):
    if args.allow_nic_gap and not args.live:
        raise VfpickError("--allow-nic-gap moves running domains' plain VF NICs: it needs --live")


def _add_live(p):
    p.add_argument("--live", action="store_true",
                   help="also move running domains whose NIC is a failover pair (virtio + VF, "
                   "one MAC): the VF is detached and the new one attached live, one NIC at a time")
    p.add_argument("--allow-nic-gap", action="store_true",
                   help="with --live: also a running domain's plain VF NIC when another of its "
                   "NICs is on a distinct link (the guest's bond carries the traffic meanwhile)")


def cmd_install_hook(args):
    from vfpick.commands import installhook

    config_path = os.path.abspath(configmod.config_path(args.config))
    configmod.load(config_path)  # refuse to bake a config that does not load
    target = installhook.install(args.hooks_dir, config_path)
    print("installed %s (config %s)" % (target, config_path))
    print(installhook.restart_hint())
    return 0


def cmd_uninstall_hook(args):
    from vfpick.commands import installhook

    target = installhook.uninstall(args.hooks_dir)
    print("removed %s" % target if target else "no vfpick hook in %s" % args.hooks_dir)
    return 0


def build_parser():
    parser = _Parser(
        prog="vfpick", description="Pick SR-IOV VFs for libvirt domains: one domain's NICs on "
        "distinct links, load spread over the host's links.")
    parser.add_argument("--config", metavar="FILE",
                        help="config file (default: $VFPICK_CONFIG or /etc/vfpick.ini)")
    parser.add_argument("--version", action="version", version="vfpick " + __version__)
    # --config is accepted before or after the command (`vfpick install-hook --config F`).
    common = _Parser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="config file (default: $VFPICK_CONFIG or /etc/vfpick.ini)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("topology", parents=[common], help="PFs, links, cards, NUMA, VFs and who holds them")
    p.add_argument("--json", action="store_true", help=_JSON_HELP)
    p.set_defaults(func=cmd_topology)

    p = sub.add_parser("resolve", parents=[common], help="resolve pool interfaces, record claims, print the XML")
    p.add_argument("file", metavar="FILE|-")
    p.set_defaults(func=cmd_resolve)

    p = sub.add_parser("status", parents=[common], help="per pool, link and PF: usage; per claim: the domain")
    p.add_argument("--json", action="store_true", help=_JSON_HELP)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("release", parents=[common], help="drop a domain's claims")
    p.add_argument("domain", metavar="NAME|UUID")
    _add_connect(p, text="libvirt URI to look names up (default: config)")
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("define", parents=[common], help="resolve, then define through libvirt")
    p.add_argument("file", metavar="FILE|-")
    p.add_argument("--start", action="store_true",
                   help="then start it (a failed start keeps the definition and its claims)")
    _add_connect(p)
    p.set_defaults(func=cmd_define)

    for verb, what, helptext in (
            ("attach", "file", "hotplug a pool interface (FILE|-): a VF distinct from the domain's NICs"),
            ("detach", "mac", "unplug a VF NIC by MAC; its claim is released once libvirt removed it")):
        # No `common` parent: here --config is virsh's (the persistent definition); the config
        # file goes before the command (`vfpick --config FILE attach ...`) or in VFPICK_CONFIG.
        p = sub.add_parser(verb, help=helptext)
        p.add_argument("domain", metavar="DOMAIN")
        p.add_argument(what, metavar="FILE|-" if what == "file" else "MAC")
        p.add_argument("--live", action="store_true", help="the running domain")
        p.add_argument("--config", dest="persistent", action="store_true",
                       help="the persistent definition (neither: live if running, else persistent)")
        _add_connect(p)
        p.set_defaults(func=cmd_attach if verb == "attach" else cmd_detach)
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="how long a live detach waits for the guest to release the device (default 30)")

    p = sub.add_parser("repick", parents=[common],
                       help="resolve a defined domain again (new VFs where needed), redefine")
    p.add_argument("domain", metavar="NAME|UUID")
    _add_connect(p)
    p.set_defaults(func=cmd_repick)

    p = sub.add_parser("reconcile", parents=[common],
                       help="make the claims agree with libvirt's domains")
    _add_connect(p)
    p.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    p.add_argument("--rebuild", action="store_true",
                   help="recreate the state from libvirt's domains (lost or corrupt state file)")
    p.set_defaults(func=cmd_reconcile)

    p = sub.add_parser("watch", parents=[common],
                       help="resolve pool interfaces of domains defined with plain virsh define")
    _add_connect(p)
    p.add_argument("--metrics-listen", metavar="ADDR:PORT",
                   help="also serve Prometheus metrics on http://ADDR:PORT/metrics")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("metrics", parents=[common],
                       help="Prometheus metrics: VFs per pool, link and state; degraded domains")
    p.add_argument("--textfile", metavar="DIR",
                   help="write DIR/vfpick.prom atomically (node_exporter's textfile collector)")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("drain", parents=[common],
                       help="maintenance: new picks avoid a PF or link; its stopped domains move")
    p.add_argument("target", metavar="PF|LINK", help="PF netdev name, PCI address or link name")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    _add_live(p)
    _add_connect(p)
    p.set_defaults(func=cmd_drain)

    p = sub.add_parser("undrain", parents=[common], help="put a drained PF or link back in service")
    p.add_argument("target", metavar="PF|LINK", help="PF netdev name, PCI address or link name")
    p.set_defaults(func=cmd_undrain)

    p = sub.add_parser("rebalance", parents=[common],
                       help="restore lost distinctness, then move NICs of defined, stopped "
                       "domains until the busiest link is within 5 %% of the best distinct "
                       "placement")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--max-moves", type=int, metavar="N", help="move at most N NICs")
    _add_live(p)
    _add_connect(p)
    p.set_defaults(func=cmd_rebalance)

    p = sub.add_parser("install-hook", parents=[common], help="install the libvirt qemu hook (qemu.d/vfpick)")
    _add_hooks_dir(p)
    p.set_defaults(func=cmd_install_hook)

    p = sub.add_parser("uninstall-hook", parents=[common], help="remove the hook install-hook installed")
    _add_hooks_dir(p)
    p.set_defaults(func=cmd_uninstall_hook)

    p = sub.add_parser("check", parents=[common],
                       help="preflight: IOMMU, vfio-pci, pool PFs, port identity, hook, daemon, "
                       "watcher, state dir; exit 1 on any fail")
    p.add_argument("--json", action="store_true", help=_JSON_HELP)
    _add_hooks_dir(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("simulate", parents=[common], help="write a simulated SR-IOV host (sysfs tree) to try vfpick")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--spec", default="two-dual-port",
                   help="preset name or JSON spec file (default: two-dual-port)")
    p.add_argument("--write-config", metavar="FILE", help="also write a config using the host")
    p.set_defaults(func=cmd_simulate)
    return parser


# Arguments that name a domain, a PF/link or a MAC: they end up in the state and in output.
_NAME_ARGS = ("domain", "target", "mac")


def _check_argv(argv, args):
    from vfpick import names

    for arg in argv:
        if names.problem(arg) == "is not UTF-8":
            raise VfpickError("argument '%s' is not UTF-8" % names.printable(arg))
    for attr in _NAME_ARGS:
        value = getattr(args, attr, None)
        why = names.problem(value) if isinstance(value, str) else None
        if why:
            raise VfpickError("%s '%s' %s" % (attr.upper(), names.printable(value), why))


def main(argv=None):
    try:
        args = build_parser().parse_args(argv)
        _check_argv(sys.argv[1:] if argv is None else argv, args)
        return args.func(args)
    except VfpickError as e:
        sys.stderr.write("vfpick: %s\n" % e)
        return 1
    except BrokenPipeError:
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("vfpick: interrupted\n")
        return 1
