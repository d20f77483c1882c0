"""The claims file's format: JSON version 2 (version 1 still read), parsed and checked claim by
claim, serialized one claim per line. Pure: bytes in, records out (vfpick.state.store does the
file, the lock and the atomic replace).

Imported by the qemu hook only for vfpick's own domains, like the store."""

import json

from vfpick import numbers, pci
from vfpick.records import HEAL_HISTORY, HEAL_OUTCOMES, Claim, HealEvent, VfSettings, Writer

VERSION = 2
# Version 1 had no "generation" and claims without gen/pending/applied/restore: still read.
_V1_FIELDS = Claim._fields[:8]
_FIELDS = Claim._fields + ("gen",)
# Written only when set, so a file without rates reads the same in a vfpick without them.
_RATE_FIELDS = ("rate_mbps", "peak_mbps", "min_rate_mbps")
_VF_RATES = ("max_tx_rate", "min_tx_rate")
# Written only when a NIC has a self-healing history: older files read the same.
_OPTIONAL = _RATE_FIELDS + ("heal",)


_STRING_FIELDS = ("vf", "pf", "link", "pool", "domain", "uuid", "mac")
assert Claim._fields[:8] == _STRING_FIELDS + ("active",)  # zip() below relies on the order


# IFLA_VF_RATE's fields are u32 Mb/s: a rate past them could never be set or put back.
MAX_RATE = numbers.U32


def _is_int(value, least, most=numbers.U64):
    return type(value) is int and least <= value <= most  # bool is an int: not a count


def _settings_problem(name, value):
    if value is None:
        return None
    if not isinstance(value, VfSettings):
        return "'%s' is not an object of trust, spoofchk" % name
    if any(v is not None and type(v) is not bool for v in value[:2]):
        return "'%s' values are not true, false or null" % name
    if any(v is not None and not _is_int(v, 0, MAX_RATE) for v in value[2:]):
        return "'%s' rates are not Mb/s counts or null" % name
    return None


def claim_problem(claim):
    if not isinstance(claim, Claim):
        return "not a Claim"
    if not isinstance(claim.active, bool):
        return "'active' is not a boolean"
    for field, value in zip(_STRING_FIELDS, claim):
        if not isinstance(value, str):
            return "'%s' is not a string" % field
    if not pci.is_canonical(claim.vf):
        return "'vf' %r is not a canonical PCI address" % claim.vf
    pending = claim.pending
    if pending is not None and not (isinstance(pending, Writer) and isinstance(pending.boot, str)
                                    and _is_int(pending.pid, 1) and _is_int(pending.start, 0)):
        return "'pending' is not an object of boot (string), pid, start (counts)"
    for field in _RATE_FIELDS:
        value = getattr(claim, field)
        if value is not None and not _is_int(value, 1, MAX_RATE):
            return "'%s' is not a rate in Mb/s" % field
    return (_settings_problem("applied", claim.applied) or _settings_problem("restore", claim.restore)
            or _heal_problem(claim.heal))


def _heal_problem(heal):
    if heal is None:
        return None
    if not isinstance(heal, tuple) or not 1 <= len(heal) <= HEAL_HISTORY:
        return "'heal' is not a list of 1 to %d events" % HEAL_HISTORY
    for event in heal:
        if not isinstance(event, HealEvent) or not _is_int(event.at, 0) \
                or event.outcome not in HEAL_OUTCOMES:
            return "'heal' event is not an object of at (count), outcome (%s), ..." % (
                ", ".join(HEAL_OUTCOMES))
        if not isinstance(event.from_vf, str) or not pci.is_canonical(event.from_vf) or (
                event.to_vf is not None and not (isinstance(event.to_vf, str)
                                                 and pci.is_canonical(event.to_vf))):
            return "'heal' event VFs are not canonical PCI addresses"
        if any(v is not None and not isinstance(v, str)
               for v in (event.from_link, event.to_link, event.why)):
            return "'heal' event links and reason are not strings or null"
    return None


def _record(make, value, name, n):
    """The namedtuple *make* from a JSON object with exactly its fields; null stays None."""
    if value is None:
        return None
    optional = _VF_RATES if make is VfSettings else ()
    if not isinstance(value, dict) or not set(make._fields) - set(optional) <= set(value) \
            <= set(make._fields):
        raise ValueError("claim %d: '%s' is not an object of %s" % (n, name, ", ".join(make._fields)))
    return make(**value)


def _from_json(entry, n, fields):
    optional = _OPTIONAL if fields is _FIELDS else ()
    if not set(fields) - set(optional) <= set(entry) <= set(fields):
        raise ValueError("claim %d: missing keys %s; unknown keys %s" % (
            n, ", ".join(sorted(set(fields) - set(optional) - set(entry))) or "none",
            ", ".join(sorted(set(entry) - set(fields))) or "none"))
    if fields is _V1_FIELDS:
        return Claim(**entry), 0
    gen = entry.pop("gen")
    if not _is_int(gen, 0):
        raise ValueError("claim %d: 'gen' is not a count" % n)
    entry.update(pending=_record(Writer, entry["pending"], "pending", n),
                 applied=_record(VfSettings, entry["applied"], "applied", n),
                 restore=_record(VfSettings, entry["restore"], "restore", n))
    if "heal" in entry:
        if not isinstance(entry["heal"], list):
            raise ValueError("claim %d: 'heal' is not a list" % n)
        entry["heal"] = tuple(_record(HealEvent, e, "heal", n) for e in entry["heal"])
    return Claim(**entry), gen


def _to_json(claim, gen):
    row = dict(zip(Claim._fields, claim))
    for name in ("pending", "applied", "restore"):
        if row[name] is not None:
            row[name] = row[name]._asdict()  # a namedtuple would be written as a list
            for rate in _VF_RATES if name != "pending" else ():
                if row[name][rate] is None:
                    del row[name][rate]
    for name in _OPTIONAL:
        if row[name] is None:
            del row[name]
    if claim.heal is not None:
        row["heal"] = [event._asdict() for event in claim.heal]
    row["gen"] = gen
    return row


def _no_duplicate_keys(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError("duplicate key %r" % key)
        obj[key] = value
    return obj


def _no_constant(name):
    raise ValueError("%s is not valid JSON" % name)


def _parse_drained(doc):
    # Optional: files written before drain existed, or with nothing drained, lack it.
    drained = doc.get("drained", [])
    if not isinstance(drained, list):
        raise ValueError("'drained' is not a list")
    for n, addr in enumerate(drained):
        if not isinstance(addr, str) or not pci.is_canonical(addr):
            raise ValueError("drained PF %d is not a canonical PCI address" % n)
    if len(set(drained)) != len(drained):
        raise ValueError("a PF is drained twice")
    return drained


def parse(raw):
    """({vf: Claim}, generation, {vf: gen}, [drained PF]) from the file's bytes; ValueError saying
    why it is not a state file."""
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys,
                         parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply")
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    if "version" not in doc:
        raise ValueError("no 'version' key")
    version = doc["version"]
    if type(version) is not int or version not in (1, VERSION):  # bool is an int: True == 1
        raise ValueError("unsupported version %r" % (version,))
    keys = {"version", "claims"} if version == 1 else {"version", "generation", "claims"}
    if set(doc) - {"drained"} != keys:
        raise ValueError("top-level keys are %s, not %s" % (", ".join(sorted(doc)),
                                                            ", ".join(sorted(keys))))
    generation = doc.get("generation", 0)
    if not _is_int(generation, 0):
        raise ValueError("'generation' is not a count")
    if not isinstance(doc["claims"], list):
        raise ValueError("'claims' is not a list")
    fields = _V1_FIELDS if version == 1 else _FIELDS
    claims, gens = {}, {}
    for n, entry in enumerate(doc["claims"]):
        if not isinstance(entry, dict):
            raise ValueError("claim %d is not an object" % n)
        claim, gen = _from_json(dict(entry), n, fields)
        problem = claim_problem(claim)
        if problem:
            raise ValueError("claim %d: %s" % (n, problem))
        if gen > generation:
            raise ValueError("claim %d: 'gen' %d is past the file's generation %d"
                             % (n, gen, generation))
        if claim.vf in claims:
            raise ValueError("VF %s is claimed twice" % claim.vf)
        claims[claim.vf] = claim
        gens[claim.vf] = gen
    return claims, generation, gens, _parse_drained(doc)


def serialize(claimset):
    # One claim per line: readable and diffable.
    rows = [json.dumps(_to_json(c, claimset.gen(c.vf))) for c in claimset.all()]
    body = ",\n  ".join(rows)
    drained = sorted(claimset.drained(), key=pci.sort_key)
    # Written only when something is drained: the file stays as it was for everyone else.
    extra = ',\n "drained": %s' % json.dumps(drained) if drained else ""
    text = '{\n "version": %d,\n "generation": %d,\n "claims": [%s%s%s]%s\n}\n' % (
        VERSION, claimset.generation + 1, "\n  " if rows else "", body, "\n " if rows else "",
        extra)
    return text.encode("utf-8")
