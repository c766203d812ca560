// The docker/leadership side of `make bench`: the Go library as packaged
// by Debian (golang-github-docker-leadership-dev, on docker/libkv), driven
// the way a service would drive it, printing the same timestamped lines as
// bench/policies/*.lua and bench/many.lua:
//
//	<wall time> start
//	<wall time> elected <node>
//	<wall time> lost <node>
//	<wall time> leader <value>          ("-" for an empty value)
//	<wall time> error <message>
//	<wall time> all-elected <n>         (many mode)
//	<wall time> stopped
//
// Built in GOPATH mode from /usr/share/gocode, offline (see bench/Makefile.inc).
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/docker/libkv"
	"github.com/docker/libkv/store"
	"github.com/docker/libkv/store/etcd"
	"github.com/docker/libkv/store/zookeeper"
)

var outMu sync.Mutex

// say prints one timestamped line; stdout is unbuffered in Go, so each
// line reaches the bench runner as soon as it happens.
func say(words ...string) {
	line := fmt.Sprintf("%.6f %s\n", float64(time.Now().UnixNano())/1e9, strings.Join(words, " "))
	outMu.Lock()
	os.Stdout.WriteString(line)
	outMu.Unlock()
}

// openStore turns etcd://h:p[,h:p] or zk://h:p[,h:p] into a libkv store.
// libkv's etcd store speaks the v2 API. Its ZooKeeper store has no lock
// TTL: the session timeout (ConnectionTimeout) is what expires a dead
// leader's lock node, so it is set to the election ttl for a fair crash
// failover comparison.
func openStore(url string, ttl time.Duration) (store.Store, error) {
	scheme, rest, ok := strings.Cut(url, "://")
	if !ok {
		return nil, fmt.Errorf("store URL %q: want etcd://h:p or zk://h:p", url)
	}
	hosts := strings.Split(rest, ",")
	switch scheme {
	case "etcd":
		etcd.Register()
		return libkv.NewStore(store.ETCD, hosts, nil)
	case "zk":
		zookeeper.Register()
		return libkv.NewStore(store.ZK, hosts, &store.Config{ConnectionTimeout: ttl})
	}
	return nil, fmt.Errorf("store URL %q: unknown scheme %q", url, scheme)
}

func main() {
	mode := flag.String("mode", "candidate", "candidate, follower or many")
	url := flag.String("store", "etcd://127.0.0.1:2379", "etcd://h:p or zk://h:p")
	key := flag.String("key", "bench/leader", "election key (many: the prefix of key-<i>)")
	node := flag.String("node", "peer", "this candidate's value")
	ttl := flag.Duration("ttl", 5*time.Second, "lock ttl")
	n := flag.Int("n", 1000, "many: elections in this process")
	flag.Parse()

	say("start")
	kv, err := openStore(*url, *ttl)
	if err != nil {
		say("error", err.Error())
		os.Exit(1)
	}
	switch *mode {
	case "candidate":
		runCandidate(kv, *key, *node, *ttl)
	case "follower":
		runFollower(kv, *key)
	case "many":
		runMany(kv, *key, *node, *ttl, *n)
	default:
		say("error", "unknown mode "+*mode)
		os.Exit(2)
	}
	kv.Close()
	say("stopped")
}
