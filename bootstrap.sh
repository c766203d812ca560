#!/bin/sh
# Sets up a fresh Debian machine and runs the demo or every test:
#   ./bootstrap.sh demo    three `leadership run` processes on file://, the leader killed
#   ./bootstrap.sh test    every spec, with real etcd, ZooKeeper and Redis on 127.0.0.1
# Installs what is missing with apt-get (run it as root for that).
set -eu
cd "$(dirname "$0")"

BUILD_PACKAGES="gcc make libc6-dev pkg-config lua5.4 liblua5.4-dev lua-cjson libjansson-dev
  libcurl4-openssl-dev libevent-dev libzookeeper-mt-dev libhiredis-dev"
TEST_PACKAGES="lua-busted luarocks etcd-server etcd-client zookeeper redis-server iproute2
  procps psmisc curl openssl util-linux strace clang libclang-rt-14-dev valgrind python3"

missing() {
    for package in "$@"; do
        dpkg-query -W -f='${Status}\n' "$package" 2>/dev/null | grep -q "ok installed" ||
            echo "$package"
    done
}

install() {
    need=$(missing "$@")
    [ -z "$need" ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "bootstrap: these Debian packages are missing; run as root to install them:" $need >&2
        exit 1
    fi
    echo "bootstrap: installing" $need
    apt-get update -qq
    # the servers' own services are not wanted: the tests start their own
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need
    rm -f /usr/sbin/policy-rc.d
}

case "${1:-}" in
demo)
    install $BUILD_PACKAGES
    exec make demo
    ;;
test)
    install $BUILD_PACKAGES $TEST_PACKAGES
    exec make check
    ;;
*)
    echo "usage: ./bootstrap.sh demo | test" >&2
    exit 2
    ;;
esac
