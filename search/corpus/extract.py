#!/usr/bin/env python3
"""Paragraphs of Debian documentation packages as search documents (see build.sh).

Reads ROOT/<package>/... as unpacked by build.sh and prints JSON lines sorted by id. Man pages
are read from their roff source (macros stripped), HTML by its block elements, plain text by
blank-line-separated paragraphs. A paragraph is kept if it has 100 to 2000 characters after
whitespace is collapsed. Deterministic: files are visited in sorted order and ids are derived
from package, file and paragraph index.
"""
import gzip
import hashlib
import html.parser
import json
import os
import re
import sys

MIN_CHARS, MAX_CHARS = 100, 2000
CJK = re.compile(r"[\u3400-\u9fff]")


def lang_of(text):
    n = len(CJK.findall(text))
    return "zh" if n * 4 >= len(text) * 1 or n > 30 else "en"


def read(path):
    op = gzip.open if path.endswith(".gz") else open
    with op(path, "rb") as f:
        raw = f.read()
    for enc in ("utf-8", "gb18030", "latin-1"):
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            continue
    return ""


ROFF_FONT = re.compile(r"\\f[BIRP1-4]|\\f\(..|\\f\[[^]]*\]|\\s[+-]?\d|\\&|\\\^|\\\||\\c|\\e")


def roff_paragraphs(text):
    paras, cur, title = [], [], None
    for line in text.splitlines():
        if line.startswith(('.\\"', "'\\\"")):
            continue
        if line.startswith((".", "'")):
            m = re.match(r"[.']\s*(\w+)\s*(.*)", line)
            if not m:
                continue
            macro, rest = m.group(1), m.group(2)
            if macro in ("TH",) and title is None:
                title = rest.split()[0].strip('"') if rest else None
            if macro in ("PP", "P", "LP", "SH", "SS", "TP", "IP", "HP", "sp", "br", "TH"):
                if cur:
                    paras.append(" ".join(cur))
                    cur = []
                if macro in ("IP",) and rest:
                    cur.append(rest.split('"')[1] if '"' in rest else rest)
                continue
            if macro in ("B", "I", "BR", "IR", "RB", "RI", "BI", "IB", "SM", "SB"):
                cur.append(rest.replace('"', ""))
            continue
        line = ROFF_FONT.sub("", line).replace("\\-", "-").replace("\\(em", "—")
        line = re.sub(r"\\\(..|\\\[[^]]*\]|\\.", "", line)
        if line.strip():
            cur.append(line.strip())
        elif cur:
            paras.append(" ".join(cur))
            cur = []
    if cur:
        paras.append(" ".join(cur))
    return title, paras


class Html(html.parser.HTMLParser):
    BLOCK = {"p", "div", "li", "td", "th", "pre", "h1", "h2", "h3", "h4", "h5", "h6", "dt", "dd", "br", "tr", "title"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paras, self.cur, self.skip, self.title, self.in_title = [], [], 0, None, False

    def flush(self):
        if self.cur:
            self.paras.append("".join(self.cur))
            self.cur = []

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self.skip += 1
        if tag == "title":
            self.in_title = True
        if tag in self.BLOCK:
            self.flush()

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self.skip:
            self.skip -= 1
        if tag == "title":
            self.in_title = False
        if tag in self.BLOCK:
            self.flush()

    def handle_data(self, data):
        if self.skip:
            return
        if self.in_title and self.title is None:
            self.title = data.strip()
            return
        self.cur.append(data)


def html_paragraphs(text):
    p = Html()
    try:
        p.feed(text)
        p.close()
    except Exception:
        pass
    p.flush()
    return p.title, p.paras


def text_paragraphs(text):
    return None, re.split(r"\n\s*\n", text)


def section_of(pkg, rel):
    parts = [x for x in rel.split("/") if x]
    for i, x in enumerate(parts):
        if re.fullmatch(r"man\d\w*", x):
            return x
    # The directory under the package's doc directory, if any.
    if "doc" in parts:
        i = parts.index("doc")
        if i + 2 < len(parts):
            return parts[i + 2]
    if "help" in parts:
        i = parts.index("help")
        if i + 2 < len(parts):
            return parts[i + 2]
    return "top"


def main(root):
    out = []
    for pkg in sorted(os.listdir(root)):
        base = os.path.join(root, pkg)
        files = []
        for d, _, fs in os.walk(base):
            for f in fs:
                files.append(os.path.join(d, f))
        for path in sorted(files):
            rel = os.path.relpath(path, base)
            name = rel.lower()
            if os.path.islink(path):
                continue
            if "/man/" in "/" + rel and re.search(r"\.\d\w*(\.gz)?$", name):
                title, paras = roff_paragraphs(read(path))
            elif re.search(r"\.(x?html?|xhp)(\.gz)?$", name):
                title, paras = html_paragraphs(read(path))
            elif re.search(r"\.txt(\.gz)?$", name):
                title, paras = text_paragraphs(read(path))
            else:
                continue
            title = title or os.path.basename(rel)
            section = section_of(pkg, rel)
            for i, p in enumerate(paras):
                p = re.sub(r"\s+", " ", p).strip()
                if not (MIN_CHARS <= len(p) <= MAX_CHARS):
                    continue
                # Roff and table debris: keep paragraphs that are mostly letters.
                letters = sum(1 for ch in p if ch.isalpha())
                if letters * 2 < len(p):
                    continue
                h = hashlib.sha1(f"{pkg}/{rel}#{i}".encode()).hexdigest()[:16]
                lang = lang_of(p)
                out.append({
                    "id": h,
                    "title": title[:200],
                    "body": p,
                    "tags": [pkg, section],
                    "lang": lang,
                    "pkg": pkg,
                })
    out.sort(key=lambda d: d["id"])
    # Packages ship the same text as HTML and as plain text: keep one copy of each body.
    seen, bodies = set(), set()
    for d in out:
        key = re.sub(r"\W+", "", d["body"])
        if d["id"] in seen or key in bodies:
            continue
        seen.add(d["id"])
        bodies.add(key)
        sys.stdout.write(json.dumps(d, ensure_ascii=False, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
