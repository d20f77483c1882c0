"""Where one NIC sits, as every command's output says it: ``VF 0000:3b:02.1 (PF 0000:3b:00.0,
link ens1f0)``. One formatter, so define, repick, attach, watch, drain and rebalance agree."""


def where(vf, link, pf=None, word="VF "):
    """*word* + *vf* + ``(PF pf, link link)``; the PF left out when None."""
    return "%s%s (%slink %s)" % (word, vf, "" if pf is None else "PF %s, " % pf, link)
