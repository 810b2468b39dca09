#!/bin/sh
# Builds the search corpus deterministically from Debian documentation packages.
#
#   search/corpus/build.sh OUT_DIR [core|full]
#
# Downloads the pinned package versions with `apt-get download` (no installation, no root
# needed beyond apt's cache), unpacks them with dpkg-deb, extracts paragraphs of 100-2000
# characters from man pages and HTML/text documentation, and writes OUT_DIR/corpus.jsonl: one
# document per line, {"id", "title", "body", "tags": [package, section...], "lang": "zh"|"en",
# "pkg"}, sorted by id. The same package versions give byte-identical output.
#
# `core` (default) uses manpages-zh, debian-reference-zh-cn and debian-reference-en (about
# 40,000 paragraphs); `full` adds the rest of the list of the search issue (over 100,000).
set -eu
OUT=${1:?usage: build.sh OUT_DIR [core|full]}
SET=${2:-core}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT/debs" "$OUT/root"
OUT=$(cd "$OUT" && pwd)

CORE="manpages-zh debian-reference-zh-cn debian-reference-en"
FULL="$CORE manpages manpages-dev debian-handbook debian-faq debian-faq-zh-cn maint-guide
maint-guide-zh-cn installation-guide-amd64 kicad-doc-zh libreoffice-help-zh-cn
libreoffice-help-en-us gimp-help-zh-cn"
case "$SET" in
  core) PKGS=$CORE ;;
  full) PKGS=$FULL ;;
  *) echo "unknown set $SET" >&2; exit 2 ;;
esac

# Pinned versions (Debian 12 "bookworm"), recorded so the corpus can be rebuilt exactly.
VERSIONS="$HERE/versions.txt"
cd "$OUT/debs"
for p in $PKGS; do
  v=$(awk -v p="$p" '$1 == p {print $2}' "$VERSIONS" 2>/dev/null || true)
  if [ -n "$v" ]; then spec="$p=$v"; else spec="$p"; fi
  if ! ls "${p}"_*.deb >/dev/null 2>&1; then
    apt-get download "$spec"
  fi
done
for d in *.deb; do
  p=${d%%_*}
  mkdir -p "$OUT/root/$p"
  dpkg-deb -x "$d" "$OUT/root/$p"
done
python3 "$HERE/extract.py" "$OUT/root" > "$OUT/corpus.jsonl"
wc -l "$OUT/corpus.jsonl"
