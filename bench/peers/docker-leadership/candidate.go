package main

import (
	"time"

	"github.com/docker/leadership"
	"github.com/docker/libkv/store"
)

// stopGrace bounds how long a stopping candidate waits for the library to
// release its lock: libkv's ZooKeeper lock cannot be interrupted while it
// waits in the queue, so a non-leader may never report back.
const stopGrace = 3 * time.Second

// runCandidate campaigns for key until SIGTERM, then calls Stop(), which
// deletes the lock when leader (a graceful handoff).
func runCandidate(kv store.Store, key, node string, ttl time.Duration) {
	c := leadership.NewCandidate(kv, key, node, ttl)
	electedCh, errCh := c.RunForElection()
	stop := stopSignal()
	leader := false
	for {
		select {
		case elected, ok := <-electedCh:
			if !ok {
				return
			}
			// The library also sends false at the start of every round; it
			// is a loss only after a win.
			if elected && !leader {
				say("elected", node)
			} else if !elected && leader {
				say("lost", node, "lock")
			}
			leader = elected
		case err, ok := <-errCh:
			if ok {
				// docker/leadership gives up after any store error.
				say("error", err.Error())
			}
		case <-stop:
			c.Stop()
			drain(electedCh, errCh)
			if leader {
				say("lost", node, "stop")
			}
			return
		}
	}
}

// drain reads both channels until the campaign goroutine closes them (it
// blocks on unbuffered sends otherwise), or stopGrace passes.
func drain(electedCh <-chan bool, errCh <-chan error) {
	deadline := time.After(stopGrace)
	for electedCh != nil || errCh != nil {
		select {
		case _, ok := <-electedCh:
			if !ok {
				electedCh = nil
			}
		case _, ok := <-errCh:
			if !ok {
				errCh = nil
			}
		case <-deadline:
			return
		}
	}
}
