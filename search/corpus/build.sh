#!/bin/sh
# Builds the search corpus deterministically from Debian documentation packages.
#
#   search/corpus/build.sh OUT_DIR [full|core]
#
# Fetches the package versions pinned in versions.txt with `apt-get download` into OUT_DIR/debs
# (only when a matching .deb is not already there; nothing is installed on the system), unpacks
# them with dpkg-deb into OUT_DIR/root, and runs extract.py, which writes
#   OUT_DIR/documents.jsonl  one document per line, sorted by id:
#                            {"id", "title", "body", "tags": [package, section, locale],
#                             "lang": "zh"|"en", "pkg", "src"}
#   OUT_DIR/documents.tsv    the same documents for Sphinx's tsvpipe (columns in README.md)
#   OUT_DIR/stats.json       counts: total, zh, en, per package
# and OUT_DIR/versions.txt, the versions actually used. The same versions give byte-identical
# output. `full` (default) is every package of versions.txt (about 105,000 documents); `core`
# only manpages-zh, debian-reference-zh-cn and debian-reference-en (quick runs and tests).
set -eu
OUT=${1:?usage: build.sh OUT_DIR [full|core]}
SET=${2:-full}
HERE=$(cd "$(dirname "$0")" && pwd)
VERSIONS="$HERE/versions.txt"
mkdir -p "$OUT/debs"
OUT=$(cd "$OUT" && pwd)
export LC_ALL=C.UTF-8 PYTHONHASHSEED=0

ALL=$(awk '!/^#/ && NF == 2 {print $1}' "$VERSIONS")
case "$SET" in
  full) PKGS=$ALL ;;
  core) PKGS="manpages-zh debian-reference-zh-cn debian-reference-en" ;;
  *) echo "build.sh: unknown set '$SET' (full or core)" >&2; exit 2 ;;
esac

command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || {
  echo "build.sh: needs apt-get and dpkg-deb (Debian or Ubuntu)" >&2; exit 1; }

# The .deb of package $1 in OUT/debs, if any. Succeeds either way: under `set -e` a failing
# `f=$(deb_of p)` would end the script silently on a machine with no .deb yet.
deb_of() {
  for f in "$OUT/debs/$1"_*.deb; do
    if [ -e "$f" ]; then echo "$f"; return 0; fi
  done
  return 0
}

updated=
: > "$OUT/versions.txt.new"
for p in $PKGS; do
  want=$(awk -v p="$p" '$1 == p {print $2}' "$VERSIONS")
  f=$(deb_of "$p")
  if [ -n "$f" ] && [ "$(dpkg-deb -f "$f" Version)" != "$want" ]; then
    rm -f "$f"; f=
  fi
  if [ -z "$f" ]; then
    if [ -z "$updated" ] && ! apt-cache show "$p" >/dev/null 2>&1; then
      apt-get update -qq || true
      updated=1
    fi
    if ! apt-cache show "$p" >/dev/null 2>&1; then
      echo "build.sh: package $p does not exist here: skipped" >&2
      continue
    fi
    (cd "$OUT/debs" && apt-get download -q "$p=$want" 2>/dev/null) || {
      echo "build.sh: $p $want not available: using the candidate version" >&2
      (cd "$OUT/debs" && apt-get download -q "$p")
    }
    f=$(deb_of "$p")
  fi
  echo "$p $(dpkg-deb -f "$f" Version)" >> "$OUT/versions.txt.new"
done
mv "$OUT/versions.txt.new" "$OUT/versions.txt"

rm -rf "$OUT/root"
mkdir -p "$OUT/root"
while read -r p v; do
  mkdir -p "$OUT/root/$p"
  # Only the kinds of file extract.py reads: the packages are mostly images.
  dpkg-deb --fsys-tarfile "$(deb_of "$p")" |
    tar -x -C "$OUT/root/$p" --wildcards '*.html' '*.htm' '*.page' '*/man/*.gz' 2>/dev/null || true
done < "$OUT/versions.txt"

python3 "$HERE/extract.py" "$OUT/root" "$OUT"
