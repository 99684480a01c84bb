#!/usr/bin/env bash
# Generates the man pages from the programs' own --help (so they cannot drift from it):
# one page per program (crucible-downstairs.1) and one per subcommand
# (crucible-downstairs-create.1), with help2man. Subcommands are read from each
# program's "Subcommands:" list. Usage: scripts/man.sh BIN_DIR OUT_DIR
set -euo pipefail
bin=$(cd "$1" && pwd)
out=$2
version=$(sed -n 's/.*kVersion = "\(.*\)";/\1/p' "$(dirname "$0")/../src/common/service.h")
[[ -n $version ]] || { echo "scripts/man.sh: no kVersion in src/common/service.h" >&2; exit 1; }
wrappers=$(mktemp -d)
trap 'rm -rf "$wrappers"' EXIT
mkdir -p "$out"
rm -f "$out"/*.1

# help2man names the page after the program it runs: a wrapper per page, which also makes
# the usage line read "crucible-downstairs create" rather than the build path.
page() {
  local prog=$1 sub=$2 name=$1${2:+-$2}
  printf '#!/bin/bash\nexec -a %q %q %s "$@"\n' "$prog" "$bin/$prog" "$sub" >"$wrappers/$name"
  chmod +x "$wrappers/$name"
  local what
  what=$("$wrappers/$name" --help | head -1)
  [[ $what == *": "* ]] && what=${what#*: }  # the programs' first line is "NAME: what it does"
  help2man --no-info --no-discard-stderr --version-string="$version" --section=1 \
    --source="Crucible in C++ $version" --manual="Crucible" --name="$what" \
    --output="$out/$name.1" "$wrappers/$name"
}

for prog in crucible-downstairs crucible-fuse crucible crucible-dsc; do
  [[ -x $bin/$prog ]] || { echo "scripts/man.sh: $bin/$prog is missing" >&2; exit 1; }
  page "$prog" ""
  subs=$("$bin/$prog" --help | awk '/^Subcommands:/ {on = 1; next} on && /^  [a-z]/ {print $1} on && /^$/ {on = 0}')
  for sub in $subs; do page "$prog" "$sub"; done
done
echo "man pages: $(ls "$out" | wc -l) in $out"
