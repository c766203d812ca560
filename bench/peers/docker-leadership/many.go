package main

import (
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/docker/leadership"
	"github.com/docker/libkv/store"
)

// retryDelay is how long a shard waits after docker/leadership gave up on
// a store error before it campaigns again with a new Candidate. The
// library has no retry of its own (any error ends RunForElection), so a
// service holding many keys must do this; a fixed delay is the simplest
// thing such a service would write.
const retryDelay = time.Second

// errorLines caps how many store errors are printed; the rest are counted.
const errorLines = 5

// runMany campaigns for n distinct keys (prefix/key-<i>) in this process,
// one Candidate each, as a service holding many shards would with
// docker/leadership. It says "all-elected n" once every key has been won
// at least once, a progress line each second until then (and nothing
// after), and runs until SIGTERM (saying a last progress line).
func runMany(kv store.Store, prefix, node string, ttl time.Duration, n int) {
	var elected, leaders, errors, lost int64
	allDone := make(chan struct{})
	for i := 0; i < n; i++ {
		go shard(kv, prefix+"/key-"+strconv.Itoa(i), node, ttl, func(won bool) {
			if won {
				atomic.AddInt64(&leaders, 1)
			} else {
				atomic.AddInt64(&leaders, -1)
				atomic.AddInt64(&lost, 1)
			}
		}, func() {
			if atomic.AddInt64(&elected, 1) == int64(n) {
				close(allDone)
			}
		}, func(err error) {
			if atomic.AddInt64(&errors, 1) <= errorLines {
				say("error", err.Error())
			}
		})
	}
	stop := stopSignal()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	ticks, done := tick.C, allDone
	for {
		select {
		case <-done:
			say("all-elected", strconv.Itoa(n))
			// Quiet from here on: the steady state is measured.
			tick.Stop()
			ticks, done = nil, nil
		case <-ticks:
			progress(&elected, &leaders, &errors, &lost)
		case <-stop:
			progress(&elected, &leaders, &errors, &lost)
			// No Stop() per candidate: the keys are unique to this run
			// (the runner deletes them); 10,000 Unlock calls would only
			// measure shutdown.
			return
		}
	}
}

func progress(elected, leaders, errors, lost *int64) {
	say("progress", fmt.Sprintf("elected=%d leaders=%d errors=%d lost=%d", atomic.LoadInt64(elected),
		atomic.LoadInt64(leaders), atomic.LoadInt64(errors), atomic.LoadInt64(lost)))
}

// shard keeps one key's campaign going: a new Candidate after each error.
// changed(true/false) on each win and loss, first() on the first win.
func shard(kv store.Store, key, node string, ttl time.Duration, changed func(bool), first func(), failed func(error)) {
	everWon := false
	for {
		c := leadership.NewCandidate(kv, key, node, ttl)
		electedCh, errCh := c.RunForElection()
		won := false
		for electedCh != nil || errCh != nil {
			select {
			case e, ok := <-electedCh:
				if !ok {
					electedCh = nil
					continue
				}
				if e != won {
					changed(e)
				}
				if e && !everWon {
					everWon = true
					first()
				}
				won = e
			case err, ok := <-errCh:
				if !ok {
					errCh = nil
					continue
				}
				failed(err)
			}
		}
		if won {
			changed(false)
		}
		time.Sleep(retryDelay)
	}
}
