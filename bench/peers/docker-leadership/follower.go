package main

import (
	"github.com/docker/leadership"
	"github.com/docker/libkv/store"
)

// runFollower prints each leader the library reports until SIGTERM.
func runFollower(kv store.Store, key string) {
	f := leadership.NewFollower(kv, key)
	leaderCh, errCh := f.FollowElection()
	stop := stopSignal()
	for {
		select {
		case leader, ok := <-leaderCh:
			if !ok {
				leaderCh = nil
				continue
			}
			if leader == "" {
				leader = "-"
			}
			say("leader", leader)
		case err, ok := <-errCh:
			if !ok {
				return
			}
			// A failed or closed watch ends docker/leadership's follower.
			say("error", err.Error())
		case <-stop:
			f.Stop()
			return
		}
	}
}
