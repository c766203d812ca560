package main

import (
	"os"
	"os/signal"
	"syscall"
)

// stopSignal is closed on the first SIGTERM or SIGINT: the bench stops a
// graceful leader with SIGTERM, as a service manager would.
func stopSignal() <-chan struct{} {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	done := make(chan struct{})
	go func() {
		<-ch
		close(done)
	}()
	return done
}
