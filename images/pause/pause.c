/*
 * Taimatsu's pod sandbox process (the "pause" container of the real node, see
 * docs/real-node.md). It is PID 1 of every pod's namespaces, so it has two jobs:
 *
 *   - stay alive, holding the pod's network and IPC namespaces, until the runtime stops
 *     the sandbox with SIGTERM (or SIGINT when run by hand), then exit 0;
 *   - reap orphans: any process re-parented to it (PID 1 of the pod) is waited for, so
 *     no zombie is left behind.
 *
 * Built static (gcc -static) by hack/real-node.sh: the image holds this binary alone.
 * All signals of interest are blocked and taken synchronously with sigwaitinfo(), so
 * there are no signal handlers and no async-signal-safety concerns.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void reap_all(void) {
  /* One SIGCHLD may stand for several exited children: wait until none is left. */
  for (;;) {
    pid_t pid = waitpid(-1, NULL, WNOHANG);
    if (pid > 0) continue;
    if (pid < 0 && errno == EINTR) continue;
    return; /* 0: children remain but none has exited; -1/ECHILD: no children */
  }
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "--version") == 0) {
    puts("taimatsu-pause 0.1.0");
    return 0;
  }
  if (getpid() != 1) fputs("taimatsu-pause: warning: not PID 1, orphans are not re-parented here\n", stderr);

  sigset_t wanted;
  sigemptyset(&wanted);
  sigaddset(&wanted, SIGTERM);
  sigaddset(&wanted, SIGINT);
  sigaddset(&wanted, SIGCHLD);
  if (sigprocmask(SIG_BLOCK, &wanted, NULL) != 0) {
    perror("taimatsu-pause: sigprocmask");
    return 1;
  }

  for (;;) {
    siginfo_t info;
    int sig = sigwaitinfo(&wanted, &info);
    if (sig < 0) {
      if (errno == EINTR) continue;
      perror("taimatsu-pause: sigwaitinfo");
      return 1;
    }
    if (sig == SIGCHLD) {
      reap_all();
    } else {
      /* SIGTERM / SIGINT: the sandbox is being stopped. */
      reap_all();
      return 0;
    }
  }
}
