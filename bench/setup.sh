#!/bin/sh
# Installs what `make bench` needs: the Go toolchain and docker/leadership
# with docker/libkv as Debian packages them (the peer is built from those
# sources, offline), the two stores, the tools the runner reads the
# processes with, and our own build's packages (as in bootstrap.sh), so a
# fresh clone runs `make bench` alone. Only what is missing; as root.
set -eu

PACKAGES="golang-go golang-github-docker-leadership-dev golang-github-docker-libkv-dev
  etcd-server zookeeper default-jre-headless curl iproute2 procps strace
  gcc make libc6-dev pkg-config lua5.4 liblua5.4-dev lua-cjson libjansson-dev
  libcurl4-openssl-dev libevent-dev libzookeeper-mt-dev libhiredis-dev"

need=""
for package in $PACKAGES; do
    dpkg-query -W -f='${Status}\n' "$package" 2>/dev/null | grep -q "ok installed" || need="$need $package"
done
[ -z "$need" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "bench: these Debian packages are missing; run as root to install them:$need" >&2
    exit 1
fi
echo "bench: installing$need"
apt-get update -qq
# the servers' own services are not wanted: the bench starts its own
printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need
rm -f /usr/sbin/policy-rc.d
