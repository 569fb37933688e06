# -*- test-case-name: tests.test_workers -*-
"""
Worker processes: how rmux uses more than one core.

One process is one event loop, so more cores means more processes.  With
C{maxProcesses} above 1, the twistd process becomes a L{parent.ParentService}
that serves nobody itself.  It creates and binds every listener's socket
with the endpoint a single rmux would listen on (so the socket file, its
mode and owner, its lock and the "address in use" error are exactly
those of a single rmux), never accepts on them, and keeps that many
worker processes running.  Each worker inherits the listening sockets
as file descriptors and runs the ordinary per-listener services, each with
its own pools and health monitor, on them (L{WorkerService}); the kernel
hands every new client to one of the workers.

A client's connection lives in one worker from accept to close, so
everything per-client (transactions, subscriptions, AUTH) works unchanged.
What is per-listener is now per-worker: each worker has its own backend
connections (C{poolSize} of them per backend, and up to C{maxPinned}
dedicated ones), its own health checks, INFO counters and script cache.

The parent talks to a worker over pipes.  The worker's stdin carries
messages from the parent, each a 4-byte length then a pickle: first the
configuration, an L{RmuxConfig} pickled by the parent (an exact copy, with
no second serialisation to keep in step with L{rmux.config}), with the
file descriptors of the sockets, rather than on its command line or in its
environment, where local users could read backend passwords and
C{requirepass}; then, on each reload, the new configuration
(L{parent.ParentService.reload}: SIGHUP goes to the parent, which reads and
checks the file once).  Stdin also stays open as a lifeline: when it
reaches end of file the parent is gone, and the worker shuts down instead
of serving on as an orphan.  The worker's log comes back on stdout (info
and below) and stderr (warnings, errors, and whatever Python itself
prints), and the parent logs each line with the worker's number.

When the parent reports stats (a stats or metrics port, statsd; see
L{rmux.metrics}), one more pipe, after the listeners' descriptors, brings
each worker's counters back every second or C{statsInterval}, as
length-prefixed JSON: the parent holds no client connection and knows only
what the workers tell it, and adds up their latest reports
(L{parent.combineReports}).

This is a process supervisor in the manner of
L{twisted.runner.procmon.ProcessMonitor}, which cannot be used as is
because it cannot pass file descriptors to its children.

The modules: L{rmux.workers.parent} (the L{ParentService} and its end of
each worker), L{rmux.workers.child} (what runs in a worker, from
C{python -m rmux.workers.child}), and L{rmux.workers.ipc} (the messages
and reports that cross the pipes between them).  Whether rmux runs in one
process or with workers is decided above them all, in
L{rmux.application}.
"""
