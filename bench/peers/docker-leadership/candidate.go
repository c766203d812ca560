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
// deletes the lock when leader (a graceful handoff). docker/leadership
// ends the campaign on any store error; like a service using it, this
// starts a new Candidate retryDelay later.
func runCandidate(kv store.Store, key, node string, ttl time.Duration) {
	stop := stopSignal()
	for {
		c := leadership.NewCandidate(kv, key, node, ttl)
		electedCh, errCh := c.RunForElection()
		if !campaign(c, node, electedCh, errCh, stop) {
			return
		}
		select {
		case <-time.After(retryDelay):
		case <-stop:
			return
		}
	}
}

// campaign follows one Candidate until it fails (true: try again) or the
// process is told to stop (false).
func campaign(c *leadership.Candidate, node string, electedCh <-chan bool, errCh <-chan error, stop <-chan struct{}) bool {
	leader := false
	for electedCh != nil || errCh != nil {
		select {
		case elected, ok := <-electedCh:
			if !ok {
				electedCh = nil
				continue
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
			if !ok {
				errCh = nil
				continue
			}
			say("error", err.Error())
		case <-stop:
			c.Stop()
			drain(electedCh, errCh)
			if leader {
				say("lost", node, "stop")
			}
			return false
		}
	}
	if leader {
		say("lost", node, "error")
	}
	return true
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
