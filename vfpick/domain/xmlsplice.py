"""Domain XML as bytes that edits can be spliced into (vfpick.hostdev's parse layer).

The hardened parse: refusals that need no parser (size, encoding, any DTD), then an expat pass
for the byte span of every node inside the root and lxml for the tree, checked to describe
the same nodes. ``tag`` writes the ASCII-only text vfpick inserts (non-ASCII as character
references), valid in every encoding accepted here (UTF-8, ASCII, ISO-8859-1).
"""

import re
import xml.parsers.expat as expat

from lxml import etree

from vfpick.domscan import MAX_BYTES, MAX_DEPTH
from vfpick.errors import XmlError

_ENCODINGS = ("utf-8", "utf8", "us-ascii", "ascii", "iso-8859-1", "latin-1", "latin1")
_TAG_END = re.compile(rb"""(?:[^'">]|'[^']*'|"[^"]*")*>""")
_ENCODING_DECL = re.compile(rb"""\A(?:\xef\xbb\xbf)?<\?xml[^>]*?\sencoding\s*=\s*(?:'([^']*)'|"([^"]*)")""")


def _hardened_parser():
    # A fresh parser per document: lxml parsers are not thread safe.
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           dtd_validation=False, huge_tree=False, remove_blank_text=False)


def _check_raw(data):
    """Refusals that need no parser: size, encoding, any DTD at all."""
    if len(data) > MAX_BYTES:
        raise XmlError("domain XML is larger than %d bytes" % MAX_BYTES)
    if not data.strip():
        raise XmlError("domain XML is empty")
    if data[:2] in (b"\xfe\xff", b"\xff\xfe") or b"\x00" in data:
        raise XmlError("domain XML must be UTF-8 (UTF-16/32 is not supported)")
    match = _ENCODING_DECL.match(data)
    if match:
        declared = (match.group(1) or match.group(2) or b"").decode("ascii", "replace").lower()
        if declared not in _ENCODINGS:
            raise XmlError("domain XML must be UTF-8, not %r" % declared[:32])
    # libvirt never writes a DTD; refusing one outright leaves nothing to expand or fetch.
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise XmlError("domain XML must not contain a DOCTYPE or entity declaration")


def _refuse_dtd(*_args):
    raise XmlError("domain XML must not contain a DOCTYPE or entity declaration")


def _node_spans(data):
    """[(start, stag_end, etag_start|None, end)] for every element, comment and PI inside the
    root, in document order (the order lxml's ``root.iter()`` yields them)."""
    spans, open_ = [], []
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_dtd
    parser.UnparsedEntityDeclHandler = _refuse_dtd
    parser.ExternalEntityRefHandler = _refuse_dtd

    def start(_tag, _attrs):
        if len(open_) >= MAX_DEPTH:
            raise XmlError("domain XML is nested deeper than %d elements" % MAX_DEPTH)
        begin = parser.CurrentByteIndex
        stag_end = _TAG_END.match(data, begin).end()
        spans.append([begin, stag_end, None, stag_end])
        open_.append(len(spans) - 1)

    def end(_tag):
        span = spans[open_.pop()]
        if data[span[1] - 2:span[1]] != b"/>":
            at = parser.CurrentByteIndex
            span[2], span[3] = at, data.index(b">", at) + 1

    def comment(_text):
        if open_:
            at = parser.CurrentByteIndex
            end_at = data.index(b"-->", at + 4) + 3
            spans.append([at, end_at, None, end_at])

    def pi(_target, _text):
        if open_:
            at = parser.CurrentByteIndex
            end_at = data.index(b"?>", at + 2) + 2
            spans.append([at, end_at, None, end_at])

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CommentHandler = comment
    parser.ProcessingInstructionHandler = pi
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise XmlError("malformed domain XML: %s, line %d, column %d"
                       % (expat.ErrorString(exc.code), exc.lineno, exc.offset))
    return [tuple(s) for s in spans]


def _attr(value, quote="'"):
    # Character references for non-ASCII: valid in every encoding we accept.
    text = (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace(quote, "&apos;" if quote == "'" else "&quot;")
            .replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;"))
    return quote + text + quote


def tag(name, attrs, quote="'", empty=True):
    """``<name k='v'.../>`` (the open tag when not *empty*) as ASCII bytes; None values left out."""
    body = "".join(" %s=%s" % (k, _attr(v, quote)) for k, v in attrs if v is not None)
    return ("<%s%s%s>" % (name, body, "/" if empty else "")).encode("ascii", "xmlcharrefreplace")


def parse(data):
    """(root, {lxml node: (start, stag_end, etag_start|None, end)}) of domain XML bytes *data*.
    XmlError for malformed, hostile or non-<domain> input."""
    _check_raw(data)
    spans = _node_spans(data)
    try:
        root = etree.fromstring(data, _hardened_parser())
    except etree.XMLSyntaxError as exc:
        raise XmlError("malformed domain XML: %s" % (str(exc).splitlines() or ["?"])[0])
    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.doctype:
        raise XmlError("domain XML must not contain a DOCTYPE or entity declaration")
    if root.tag != "domain":
        raise XmlError("not a libvirt domain: the root element is <%s>"
                       % etree.QName(root).localname)
    nodes = list(root.iter())
    if len(nodes) != len(spans) or any(
            not isinstance(n.tag, str) and n.tag not in (etree.Comment, etree.PI) for n in nodes):
        raise XmlError("domain XML holds nodes vfpick cannot rewrite safely")
    # The dict keeps every proxy alive, so lxml hands back these same objects later.
    return root, dict(zip(nodes, spans))


def parse_fragment(data, what, depth):
    """The root element of a small document that goes into a domain (the interface `vfpick
    attach` reads), with the domain's refusals: size, encoding (UTF-16/32 included, so a DTD
    in any encoding), any DTD, and at most *depth* levels (where it lands in the domain counts
    against MAX_DEPTH). XmlError naming *what* otherwise."""
    try:
        _check_raw(data)
        _node_spans(data)
        root = etree.fromstring(data, _hardened_parser())
    except XmlError as exc:
        text = str(exc)
        if text.startswith("malformed domain XML: "):
            text = "%s is not well-formed XML: %s" % (what, text[len("malformed domain XML: "):])
        raise XmlError(text.replace("domain XML", what, 1)) from None
    except etree.XMLSyntaxError as exc:
        raise XmlError("%s is not well-formed XML: %s" % (what, (str(exc).splitlines() or ["?"])[0]))
    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.doctype:
        raise XmlError("%s must not contain a DOCTYPE or entity declaration" % what)
    if max(sum(1 for _ in el.iterancestors()) for el in root.iter()) + 1 > depth:
        raise XmlError("%s is nested deeper than %d elements" % (what, depth))
    return root
