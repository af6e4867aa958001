/*
 * netprobe ADDRESS PORT TIMEOUT_MS: tries one TCP connection and says whether it was
 * established: exit 0 "connected", 1 "refused" or "timed out" (a policy's drop), 2 on a
 * usage or system error, the outcome printed on stdout.
 * netprobe wait: does nothing until SIGTERM or SIGINT (a pod's main process).
 *
 * The real node's NetworkPolicy tests (hack/real-node.sh builds it into the image
 * registry.local/taimatsu/netprobe:0.1.0) run `netprobe wait` as a pod with the labels and
 * namespace under test and, once the NetworkPolicy implementation has seen that pod,
 * `kubectl exec` the attempts in it: the pod is then known to be covered by the rules when
 * it connects.
 *
 * Static (gcc -static), no libc resolver use: the address must be numeric (IPv4 or IPv6).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int outcome(const char *what, int code) {
  printf("%s\n", what);
  fflush(stdout);
  return code;
}

/* As PID 1 the default SIGTERM action does not apply: take the signal synchronously. */
static int wait_for_stop(void) {
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  if (sigprocmask(SIG_BLOCK, &stop, NULL) != 0) return 2;
  int sig;
  while (sigwait(&stop, &sig) != 0) {
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "wait") == 0) return wait_for_stop();
  if (argc != 4) {
    fprintf(stderr, "usage: netprobe ADDRESS PORT TIMEOUT_MS | netprobe wait\n");
    return 2;
  }
  struct sockaddr_storage addr;
  socklen_t len;
  memset(&addr, 0, sizeof addr);
  int port = atoi(argv[2]), timeout_ms = atoi(argv[3]);
  if (port <= 0 || port > 65535 || timeout_ms <= 0) return outcome("bad port or timeout", 2);
  struct sockaddr_in *v4 = (struct sockaddr_in *)&addr;
  struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&addr;
  if (inet_pton(AF_INET, argv[1], &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons((unsigned short)port);
    len = sizeof *v4;
  } else if (inet_pton(AF_INET6, argv[1], &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons((unsigned short)port);
    len = sizeof *v6;
  } else {
    return outcome("not a numeric address", 2);
  }
  int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return outcome(strerror(errno), 2);
  if (connect(fd, (struct sockaddr *)&addr, len) == 0) return outcome("connected", 0);
  if (errno != EINPROGRESS) return outcome(errno == ECONNREFUSED ? "refused" : strerror(errno), 1);
  /* A dropped SYN is never answered: the timeout is what a policy's DROP looks like. */
  struct pollfd p = {.fd = fd, .events = POLLOUT};
  int ready;
  do {
    ready = poll(&p, 1, timeout_ms);
  } while (ready < 0 && errno == EINTR);
  if (ready < 0) return outcome(strerror(errno), 2);
  if (ready == 0) return outcome("timed out", 1);
  int err = 0;
  socklen_t errlen = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &errlen) < 0) return outcome(strerror(errno), 2);
  if (err == 0) return outcome("connected", 0);
  return outcome(err == ECONNREFUSED ? "refused" : strerror(err), 1);
}
