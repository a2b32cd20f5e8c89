// pause: the sandbox ("pause") container of every pod on the local node. It holds the
// pod's namespaces open and does nothing else; made here because no registry is
// reachable to pull registry.k8s.io/pause. Like the upstream one (build/pause/linux/
// pause.c), it exits on SIGINT/SIGTERM and reaps any child it inherits as PID 1.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
