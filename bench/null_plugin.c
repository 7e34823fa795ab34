/*
 * A Docker authorization plugin that allows everything and does nothing else, as fast as a
 * single-threaded epoll server answers: the floor any authorization plugin costs dockerd's
 * API calls on this machine (dockerd's two plugin round trips per call included).
 *
 * Usage: null_plugin SOCKET_PATH. HTTP/1.1 with keep-alive and pipelining, Content-Length
 * bodies only (what dockerd sends). Built and run by the guard benchmark only.
 */
#define _GNU_SOURCE /* memmem, accept4 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_EVENTS 64
#define BUF_SIZE (1 << 16)

static const char ALLOW[] =
    "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.plugins.v1.2+json\r\n"
    "Content-Length: 15\r\n\r\n{\"Allow\":true}\n";
static const char ACTIVATE[] =
    "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.plugins.v1.2+json\r\n"
    "Content-Length: 25\r\n\r\n{\"Implements\":[\"authz\"]}\n";

struct conn {
    int fd;
    size_t len;
    char *buf; /* grows to hold one whole request: AuthZRes carries Docker's answer */
    size_t cap;
};

static void drop(int ep, struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->buf);
    free(c);
}

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) { /* a full socket buffer: wait for it, briefly */
                usleep(100);
                continue;
            }
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Answers every whole request in the buffer; returns -1 when the connection must go. */
static int serve(struct conn *c) {
    for (;;) {
        char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (end == NULL)
            return 0;
        size_t head = (size_t)(end - c->buf) + 4;
        size_t body = 0;
        for (char *line = c->buf; line < end;) {
            char *eol = memmem(line, (size_t)(end - line) + 2, "\r\n", 2);
            if (eol == NULL)
                break;
            if ((size_t)(eol - line) > 15 && strncasecmp(line, "Content-Length:", 15) == 0)
                body = strtoul(line + 15, NULL, 10);
            line = eol + 2;
        }
        if (c->len < head + body)
            return 0;
        int activate = strncmp(c->buf, "POST /Plugin.Activate", 21) == 0;
        const char *answer = activate ? ACTIVATE : ALLOW;
        size_t n = activate ? sizeof(ACTIVATE) - 1 : sizeof(ALLOW) - 1;
        if (write_all(c->fd, answer, n) < 0)
            return -1;
        memmove(c->buf, c->buf + head + body, c->len - head - body);
        c->len -= head + body;
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s SOCKET_PATH\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, argv[1], sizeof(addr.sun_path) - 1);
    unlink(argv[1]);
    if (ls < 0 || bind(ls, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(ls, 512) < 0) {
        perror("listen");
        return 1;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, events, MAX_EVENTS, -1);
        if (n < 0 && errno != EINTR)
            return 1;
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c == NULL) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    struct conn *nc = calloc(1, sizeof(*nc));
                    nc->fd = fd;
                    nc->cap = BUF_SIZE;
                    nc->buf = malloc(nc->cap);
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            for (;;) {
                if (c->len == c->cap) {
                    c->cap *= 2;
                    c->buf = realloc(c->buf, c->cap);
                }
                ssize_t r = read(c->fd, c->buf + c->len, c->cap - c->len);
                if (r > 0) {
                    c->len += (size_t)r;
                    continue;
                }
                if (r < 0 && errno == EINTR)
                    continue;
                if (r < 0 && errno == EAGAIN) {
                    if (serve(c) < 0)
                        drop(ep, c);
                } else {
                    drop(ep, c); /* closed by dockerd, or broken */
                }
                break;
            }
        }
    }
}
