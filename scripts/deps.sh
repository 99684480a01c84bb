#!/usr/bin/env bash
# Installs the Debian 12 packages the project needs, as root. Idempotent: quiet and
# quick when everything is present. Usage: scripts/deps.sh [--check] [bench] [deb]
# ("bench" adds what only make bench needs: nbdkit and nbdfuse to compare against;
# "deb" what make deb needs: debhelper, fakeroot and lintian).
set -euo pipefail

packages=(
  # build (help2man: the man pages, from --help)
  g++ make pkg-config help2man
  # libraries (headers + link)
  libasio-dev libcli11-dev libyaml-cpp-dev libspdlog-dev libfmt-dev nlohmann-json3-dev
  libexpected-dev libxxhash-dev libsodium-dev libssl-dev libfuse3-dev liburing-dev libsystemd-dev
  prometheus-cpp-dev libcpp-httplib-dev
  # tests, fuzzing, lint
  libgtest-dev libgmock-dev clang libclang-rt-14-dev clang-format clang-tidy
  # runtime tools used by the end-to-end tests, make run and make bench
  fuse3 util-linux uuid-runtime e2fsprogs fio python3 iproute2 procps curl
  # the network-namespace test: packet loss and partitions as nftables rules
  nftables
  # the metrics e2e test: promtool and a real Prometheus server scraping the cluster
  prometheus
  # the status --watch e2e test reads the live view off a tmux screen
  tmux
  # the snapshot e2e test: regions on an XFS with reflink (mkfs.xfs -m reflink=1)
  xfsprogs
  # the tracing e2e test: Jaeger's IDL compiled by thrift and decoded by the Python Thrift
  # library; OTLP's .proto files compiled by protoc and parsed by Python's protobuf
  thrift-compiler python3-thrift protobuf-compiler python3-protobuf
)

check_only=false
for arg in "$@"; do
  case $arg in
    --check) check_only=true ;;
    bench) packages+=(nbdkit nbdfuse) ;;
    deb) packages+=(debhelper fakeroot dpkg-dev lintian) ;;
    *) echo "scripts/deps.sh: unknown argument '$arg' (expected --check, bench or deb)" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi
if $check_only; then
  echo "missing Debian packages: ${missing[*]}" >&2
  exit 1
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "missing Debian packages: ${missing[*]}" >&2
  echo "run 'make deps' as root (or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed ${#missing[@]} packages"
